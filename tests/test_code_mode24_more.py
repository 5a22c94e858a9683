"""Code mode with the rest of the gateway, over real transports: the optimizer (a script finds a tool and calls it
in one request), the 2025-11-25 era (a backend's question relayed to the client in the middle of a script) and
stdio, the audit (each call a script makes is its caller's, and the log holds neither script nor data), and a
client's cancellation (the script's interpreter ended, only the idle spare left; the run slot freed; the call in
flight cancelled at the backend)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.support import EXAMPLES, Gateway, demo_backend, running_gateway, write_config
from tests.test_telemetry_audit import read_events

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOL = "execute_tool_script"
CODE_MODE = {"enabled": True, "cpu_seconds": 2, "call_timeout": 20, "runs": {"per_caller": 1, "total": 1}}
ASKER = {
    "name": "asker",
    "command": sys.executable,
    "args": [str(EXAMPLES / "backends" / "chatty_asker.py")],
    "roots": "relay",
}
# A backend whose `hold` waits until cancelled, marking its start and its cancellation as files in argv[1].
HOLDER = '''\
import pathlib, sys
import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("holder")
marks = pathlib.Path(sys.argv[1])


@server.tool()
async def hold(tag: str) -> str:
    """Wait until cancelled."""
    (marks / f"{tag}.started").touch()
    try:
        await anyio.sleep(120)
    except anyio.get_cancelled_exc_class():
        (marks / f"{tag}.cancelled").touch()
        raise
    return tag


server.run()
'''
T = TypeVar("T")
RESULT_MOST = 65536  # limits.max_result_bytes of the `served` gateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def run(client: Client, script: str, **data: Any) -> types.CallToolResult:
    return await client.call_tool(TOOL, {"script": script, "data": data} if data else {"script": script})


async def until(value: Callable[[], T], what: str, within: float = 30.0) -> T:
    """`value()` once it is truthy, polled until the deadline."""
    deadline = time.monotonic() + within
    while not (found := value()):
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await anyio.sleep(0.05)
    return found


async def list_roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/roots-of-the-client", name="work")])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """The optimizer on (keywords only until the vectors are ready: no wait), the audit to a file with its
    defaults (no arguments or results), one script at a time in all."""
    directory = tmp_path_factory.mktemp("code_mode_more")
    (directory / "holder.py").write_text(HOLDER)
    (directory / "marks").mkdir()
    holder = {
        "name": "holder",
        "command": sys.executable,
        "args": [str(directory / "holder.py"), str(directory / "marks")],
    }
    config = {
        "backends": [demo_backend("notes"), ASKER, holder],
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0},
        "code_mode": CODE_MODE,
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
        "limits": {"max_result_bytes": RESULT_MOST},
    }
    with running_gateway(write_config(directory, config)) as gateway:  # logs at info
        yield gateway, directory


FIND_AND_CALL = """\
found = call_tool("find_tool", query=task, limit=3)
top = found["tools"][0]
return {"top": top["name"], "ranking": found["ranking"], "value": call_tool(top["name"], {})}"""


async def test_with_the_optimizer_a_script_finds_a_tool_and_calls_it_in_one_request(
    served: tuple[Gateway, Path],
) -> None:
    gateway, _ = served
    async with Client(gateway.url) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"find_tool", "call_tool", TOOL}
        result = await run(client, FIND_AND_CALL, task="report this server's name, process id and start time")
    assert not result.is_error, text(result)
    answer = result.structured_content
    assert answer is not None and answer["top"] == "notes_whoami" and answer["ranking"] in ("keyword", "hybrid")
    assert answer["value"]["name"] == "demo" and isinstance(answer["value"]["pid"], int)


RELAYED = """\
asked = call_tool("asker_ask_client", kind="roots", count=1)
call_tools([["notes_save_note", {"title": t, "text": "era " + t}] for t in titles])
return {"asked": asked, "found": sorted(call_tool("notes_search_notes", query="era")), "pid": call_tool(
    "notes_whoami")["pid"]}"""


async def test_a_2025_11_25_clients_script_calls_ride_its_own_sessions_which_may_ask_it(
    served: tuple[Gateway, Path],
) -> None:
    """A client that answers roots has backend sessions of its own: the script's calls use them (the notes
    backend's process is the one the client's direct call reaches), and a backend's question in the middle of
    the script reaches the client."""
    gateway, _ = served
    async with Client(gateway.url, mode="legacy", list_roots_callback=list_roots) as client:
        assert client.protocol_version == "2025-11-25"
        own_pid = (await client.call_tool("notes_whoami", {})).structured_content["pid"]  # type: ignore[index]
        result = await run(client, RELAYED, titles=["x1", "x2"])
    async with Client(gateway.url) as shared:
        shared_pid = (await shared.call_tool("notes_whoami", {})).structured_content["pid"]  # type: ignore[index]
    assert not result.is_error, text(result)
    answer = result.structured_content
    assert answer is not None and answer["found"] == ["x1", "x2"] and answer["pid"] == own_pid
    assert json.loads(answer["asked"]) == {"answered": 1, "refused": 0, "errors": []}  # a str tool: its JSON text
    assert own_pid != shared_pid


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_scripts_calls_work_over_stdio(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes"), ASKER], "code_mode": CODE_MODE})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)]
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        transport = stdio_client(params, errlog=errlog)
        async with Client(transport, mode=mode, list_roots_callback=list_roots) as client:  # type: ignore[arg-type]
            era = client.protocol_version
            fanned = await run(client, "call_tools([['notes_save_note', {'title': t, 'text': 'io'}] for t in ts])\n"
                               "sorted(call_tool('notes_search_notes', query='io'))", ts=["s1", "s2", "s3"])  # fmt: skip
            asked = await run(client, "call_tool('asker_ask_client', kind='roots')")
    assert (mode, era) in (("legacy", "2025-11-25"), ("auto", "2026-07-28")), era
    assert text(fanned) == '["s1", "s2", "s3"]', text(fanned)
    # A 2025-11-25 client is asked in the middle of the script; a 2026-07-28 caller's script cannot hand a
    # backend's question back as a round (provider.py `script_exchange`): the backend hears a refusal.
    asked_counts = {k: v for k, v in json.loads(text(asked)).items() if k != "errors"}
    assert asked_counts == ({"answered": 1, "refused": 0} if mode == "legacy" else {"answered": 0, "refused": 1})


AUDITED = """\
# the-script-text-itself
call_tool("notes_save_note", title="audit", text=word)
found = call_tool("find_tool", query="search notes " + word)
return call_tool("notes_search_notes", query=word)"""


async def test_each_call_of_a_script_is_audited_as_its_callers_without_script_or_data(
    served: tuple[Gateway, Path],
) -> None:
    gateway, directory = served
    audit = directory / "audit.log"
    named = types.Implementation(name="audited-script-client", version="1")
    async with Client(gateway.url, mode="legacy", client_info=named) as client:
        result = await run(client, AUDITED, word="zebra-4711")
    assert text(result) == '["audit"]', text(result)

    def script_event() -> dict[str, Any] | None:
        events = read_events(audit) if audit.exists() else []
        mine = [e for e in events if e["subjects"].get("client_name") == named.name]
        return next((e for e in mine if e["target"].get("name") == TOOL), None)

    script = await until(script_event, "the script's audit event")
    assert script is not None
    who = script["subjects"]["caller_id"]
    assert who.startswith("session:") and script["type"] == "mcp_tool_call" and script["outcome"] == "success"
    calls = [
        e for e in read_events(audit) if e["subjects"]["caller_id"] == who and e["target"]["method"] == "tools/call"
    ]
    assert [(e["type"], e["target"]["name"]) for e in calls] == [
        ("mcp_tool_call", "notes_save_note"),
        ("vmcp_find_tool", "find_tool"),
        ("mcp_tool_call", "notes_search_notes"),
        ("mcp_tool_call", TOOL),
    ]
    request = script["metadata"]["extra"]["request_id"]
    for event in calls:
        assert event["subjects"] == script["subjects"] and event["outcome"] == "success", event
        assert event["metadata"]["extra"]["request_id"] == request and "data" not in event, event
    logged = audit.read_text() + gateway.output()
    assert "zebra-4711" not in logged and "the-script-text-itself" not in logged


def runners(gateway: Gateway) -> dict[int, bool]:
    """The gateway's interpreter processes: pid -> whether it has run a script (written to its stdout); the
    one that has not is the spare started ahead of the next script (provider.py `Spare`)."""
    found = {}
    for process in gateway.children():
        with contextlib.suppress(psutil.NoSuchProcess):  # reaped since the listing
            if "code_mode.runner" in " ".join(process.cmdline()):
                found[process.pid] = process.io_counters().write_chars > 0
    return found


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cancelled_script_leaves_no_process_and_frees_its_slot(served: tuple[Gateway, Path], mode: str) -> None:
    """The client gives up on a script whose call is in flight at the backend: the call is cancelled there,
    the interpreter killed, and the slot (one in all) is free for the caller's next script."""
    gateway, directory = served
    marks = directory / "marks"
    async with Client(gateway.url, mode=mode) as client:
        await client.list_tools()
        async with anyio.create_task_group() as group:
            group.start_soon(run, client, f"call_tool('holder_hold', tag='{mode}')")
            await until(lambda: (marks / f"{mode}.started").exists(), "the script's call reached the backend")
            ran = [pid for pid, has_run in runners(gateway).items() if has_run]
            assert len(ran) == 1, runners(gateway)
            group.cancel_scope.cancel()
        await until(lambda: ran[0] not in runners(gateway), "the cancelled script's interpreter ended")
        assert not any(runners(gateway).values()) and len(runners(gateway)) <= 1, runners(gateway)  # a spare at most
        await until(lambda: (marks / f"{mode}.cancelled").exists(), "the call cancelled at the backend")

        async def next_script() -> types.CallToolResult | None:
            result = await run(client, "call_tool('notes_whoami')['name']")
            return None if "scripts running" in text(result) else result  # the cancelled run's release, pending

        deadline = time.monotonic() + 30
        while (after := await next_script()) is None:
            assert time.monotonic() < deadline, "the cancelled script still holds its slot"
            await anyio.sleep(0.05)
    assert text(after) == "demo", text(after)
    await until(lambda: not any(runners(gateway).values()), "the next script's interpreter reaped")
    era = "2025-11-25" if mode == "legacy" else "2026-07-28"

    def cancelled() -> list[tuple[str, str | None]]:
        events = read_events(directory / "audit.log")
        held = [e for e in events if e["target"].get("name") == "holder_hold"]
        callers = {e["subjects"]["caller_id"] for e in held if e["metadata"]["extra"]["protocol_version"] == era}
        mine = [e for e in events if e["subjects"]["caller_id"] in callers]
        seen = [
            (e["target"]["name"], e["metadata"]["extra"].get("error_type")) for e in mine if e["outcome"] != "success"
        ]
        return seen if any(name == TOOL for name, _ in seen) else []  # the script's event is written last

    # Audited as the client's cancellations (not failures), the script's and its call's alike.
    assert await until(cancelled, "the audit of the cancelled run") == [
        ("holder_hold", "cancelled"),
        (TOOL, "cancelled"),
    ]


async def test_the_results_of_one_call_tools_are_bounded_as_the_interpreters_lines_are(
    served: tuple[Gateway, Path],
) -> None:
    """Each search answers ~25 KB (within limits.max_result_bytes); 40 of them at once are ~1 MB the gateway
    holds and encodes in one piece: refused, as a line of the interpreter's past the same size is."""
    gateway, _ = served
    script = """\
call_tool("notes_save_note", title="big" + "x" * 25000, text="")
found = call_tools([["notes_search_notes", {"query": "big"}]] * 40)
len(found)"""
    async with Client(gateway.url) as client:
        result = await run(client, script)
    assert result.is_error and "limits.max_result_bytes" in text(result), text(result)[:200]
