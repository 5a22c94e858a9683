"""Code mode in the real `vmcp serve` over a real demo backend, driven by the SDK client over HTTP: a script that
chains and fans out calls (their effects seen at the backend), its errors at the script's line, the kernel's
bounds on its process (CPU, memory), the gateway's (deadline per call, calls per script, scripts per caller),
and the policy judging the script tool and each call it makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client

from tests.support import Gateway, bearer_client, demo_backend, policed_config, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOL = "execute_tool_script"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


CODE_MODE = {"enabled": True, "cpu_seconds": 2, "memory_mb": 256, "call_timeout": 3, "max_calls": 6}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("code_mode")
    config = {
        "backends": [demo_backend("notes")],
        "code_mode": {**CODE_MODE, "runs": {"per_caller": 1, "total": 4}},
        "server": {"max_body_bytes": 1_000_000},
    }
    with running_gateway(write_config(directory, config), "--log-level", "warning") as running:
        yield running


async def run(client: Client, script: str, **data: Any) -> types.CallToolResult:
    return await client.call_tool(TOOL, {"script": script, "data": data} if data else {"script": script})


async def test_a_script_chains_and_fans_out_calls_and_returns_only_its_value(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert TOOL in listed and "call_tools" in (listed[TOOL].description or "")
        script = """\
call_tools([["notes_save_note", {"title": t, "text": "about " + t}] for t in titles])
found = call_tool("notes_search_notes", query="about")
return {"found": sorted(found), "server": call_tool("notes_whoami")["name"]}"""
        result = await run(client, script, titles=["alpha", "beta", "gamma"])
        assert not result.is_error, text(result)
        assert result.structured_content == {"found": ["alpha", "beta", "gamma"], "server": "demo"}
        assert json.loads(text(result)) == result.structured_content
        # The calls reached the backend: the notes are there for a direct call too.
        direct = await client.call_tool("notes_search_notes", {"query": "gamma"})
        assert "gamma" in text(direct)
        # A script may end with an expression instead of `return`.
        assert text(await run(client, "[x * 2 for x in xs]", xs=[1, 2])) == "[2, 4]"


async def test_a_script_reports_progress_as_its_calls_are_answered(gateway: Gateway) -> None:
    """A client that asked for progress hears of each batch of calls answered, the count only growing."""
    heard: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append((progress, total, message))

    script = "a = call_tool('notes_whoami')\nb = call_tools([['notes_whoami'], ['notes_whoami']])\nlen(b) + 1"
    async with Client(gateway.url) as client:
        result = await client.call_tool(TOOL, {"script": script}, progress_callback=on_progress)
    assert text(result) == "3", text(result)
    assert heard == [(1.0, None, "1 tool calls answered"), (3.0, None, "3 tool calls answered")], heard


async def test_errors_name_the_line_and_the_cause(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        cases = {
            "a = 1\ncall_tool('no_such_tool')": "line 2: tool 'no_such_tool': Unknown tool",
            "x = (": "line 1: Parse error",
            "y = 1\nreturn zz": "line 2: Variable `zz` not found",
            f"call_tool('{TOOL}', script='1')": "a script cannot run another script",
            "def f():\n  return 1\nf": "no JSON form",
            "call_tool('notes_slow_echo', message='hi', seconds=30)": "no answer within 3 s (code_mode.call_timeout)",
            "for i in range(10):\n  call_tool('notes_whoami')": "more than 6 tool calls (code_mode.max_calls)",
        }
        for script, expected in cases.items():
            result = await run(client, script)
            assert result.is_error and expected in text(result), (script, text(result))
        for arguments, expected in [
            ({"script": ""}, "`script` is required"),
            ({"script": "1", "data": [1]}, "`data` is an object"),
            ({"script": "1", "data": {"not a name": 1}}, "cannot be a variable's name"),
            ({"script": "1", "other": 1}, "unknown argument"),
            ({"script": "x" * 70000}, "at most 65536 (code_mode.max_script_bytes)"),
        ]:
            result = await client.call_tool(TOOL, arguments)
            assert result.is_error and expected in text(result), (arguments, text(result))


async def test_data_values_results_and_messages_keep_their_meaning(gateway: Gateway) -> None:
    """`data` names stay the script's to read and rebind when it ends in `return`, CRLF line ends included; a
    tool's whole error reaches the caller, at the script's line even when the error imitates Starlark's report;
    a large object result is text only; values with no JSON form, and data shadowing a built-in, are refused."""
    async with Client(gateway.url) as client:
        rebound = await run(client, "if not city:\r\n  return None\r\ncity = city.upper()\r\nreturn city", city="oslo")
        assert text(rebound) == "OSLO", text(rebound)
        script = "x = 1\ncall_tool('notes_save_note', title='t', text=1)"
        refused = await run(client, script)
        assert refused.is_error and text(refused).startswith("the script failed: line 2: tool 'notes_save_note': ")
        assert "'text'" in text(refused), text(refused)  # the argument check's own words, whole
        saved = await run(client, "call_tool('notes_save_note', title='imitation', text='--> script.star:42:1')")
        found = await run(client, "call_tools([['notes_search_notes', {'query': 'script.star'}]])[0]")
        assert not saved.is_error and "imitation" in text(found), text(found)
        big = await run(client, "{'rows': [[]] * 20000}")
        assert big.structured_content is None and json.loads(text(big)) == {"rows": [[]] * 20000}
        small = await run(client, "{'rows': [[]] * 2}")
        assert small.structured_content == {"rows": [[], []]}
        for script, expected in [
            ("range(3)", "has no JSON form"),
            ("1 << 20000", "(4300 digits)"),
            ("call_tool('notes_save_note', title='t', text='x' * 2000000)", "(server.max_body_bytes"),
        ]:
            result = await run(client, script)
            assert result.is_error and expected in text(result), (script, text(result))
        for name in ("True", "len", "call_tools", "naïve"):
            result = await client.call_tool(TOOL, {"script": "1", "data": {name: 1}})
            assert result.is_error and "cannot be a variable's name" in text(result), (name, text(result))


async def test_the_kernel_bounds_a_script_and_the_gateway_keeps_answering(gateway: Gateway) -> None:
    """A CPU-bound loop is stopped by its CPU allowance, a memory hog by its memory's: neither runs in the
    gateway, which answers other requests meanwhile, and no script's interpreter outlives it (one spare waits for
    the next script)."""
    spin = "x = 0\nfor i in range(2000000000):\n  x = i\nx"
    hog = "l = []\nfor i in range(100000000):\n  l.append(str(i) * 10)\nlen(l)"
    async with Client(gateway.url) as client:
        answers: dict[str, types.CallToolResult] = {}

        async def script(name: str, source: str) -> None:
            answers[name] = await run(client, source)

        async with anyio.create_task_group() as group:
            group.start_soon(script, "spin", spin)
            assert (await client.call_tool("notes_whoami", {})).structured_content["name"] == "demo"  # type: ignore[index]
        async with anyio.create_task_group() as group:
            group.start_soon(script, "hog", hog)
        assert "it used all its CPU time (2 s, code_mode.cpu_seconds)" in text(answers["spin"]), text(answers["spin"])
        assert "it ran out of memory (256 MiB, code_mode.memory_mb)" in text(answers["hog"]), text(answers["hog"])
    runners = [
        p
        for p in psutil.Process(gateway.proc.pid).children(recursive=True)
        if "code_mode.runner" in " ".join(p.cmdline())
    ]
    assert len(runners) <= 1, runners  # the spare started for the next script; the scripts' own were reaped


async def test_scripts_per_caller_are_bounded(gateway: Gateway) -> None:
    """With `runs.per_caller` 1, of two scripts of one caller sent at once one runs and the other is refused at
    once (each holds its slot for the 4.5 s its calls take, so they overlap however loaded the machine)."""
    script = "[call_tool('notes_slow_echo', message='done', seconds=1.5) for _ in range(3)][-1]"
    async with Client(gateway.url) as client:
        await client.list_tools()  # the SDK client lists once before its first call; not while the test calls
        answers: list[types.CallToolResult] = []

        async def one() -> None:
            answers.append(await run(client, script))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)
    assert sorted(text(a) for a in answers) == [
        "done",
        "this caller already holds 1 scripts running (code_mode.runs.per_caller); try again in 1s",
    ]


POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action, resource == Tool::"notes_whoami");
forbid(principal in Group::"visitor", action, resource == Tool::"execute_tool_script");
"""


async def test_the_policy_judges_the_script_tool_and_each_call_it_makes(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "code_mode": CODE_MODE}
    groups = {"guest": ["guest"], "visitor": ["visitor"], "dev": ["dev"]}
    path, keys = policed_config(tmp_path, groups, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        async with bearer_client(running.url, keys["dev"]) as dev:
            allowed = await run(dev, "call_tool('notes_whoami')['name']")
            assert text(allowed) == "demo", text(allowed)
        async with bearer_client(running.url, keys["guest"]) as guest:
            refused = await run(guest, "call_tool('notes_search_notes', query='x')\ncall_tool('notes_whoami')")
            # As a script calling a tool that does not exist is stopped.
            expected = "the script failed: line 2: tool 'notes_whoami': Unknown tool: 'notes_whoami'"
            assert refused.is_error and text(refused) == expected, text(refused)
        async with bearer_client(running.url, keys["visitor"]) as visitor:
            assert TOOL not in {t.name for t in (await visitor.list_tools()).tools}
            with pytest.raises(Exception, match=f"^Unknown tool: '{TOOL}'$"):
                await run(visitor, "1")


@pytest.mark.parametrize(
    ("code_mode", "expected"),
    [
        ({"enabled": True, "tool_name": "find_tool"}, "code_mode.tool_name: 'find_tool' is a meta-tool's name"),
        ({"enabled": True, "tool_name": "clock"}, "code_mode.tool_name: 'clock' is also a workflow's name"),
        ({"enabled": True, "runs": {"per_caller": 5, "total": 4}}, "per_caller (5) is more than total (4)"),
    ],
)
def test_validate_refuses_a_script_tool_that_would_hide_another(
    tmp_path: Path, code_mode: dict[str, Any], expected: str
) -> None:
    workflow = {"name": "clock", "description": "d", "steps": [{"id": "a", "tool": "notes_whoami"}]}
    path = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow], "code_mode": code_mode}
    )
    vmcp = Path(sys.executable).parent / "vmcp"
    wide = {**os.environ, "COLUMNS": "400"}  # one problem a line, however narrow the terminal running the suite
    done = subprocess.run([vmcp, "validate", "-c", str(path)], capture_output=True, text=True, timeout=60, env=wide)
    assert done.returncode != 0 and expected in done.stdout + done.stderr, done.stdout + done.stderr
