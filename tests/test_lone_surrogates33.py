"""A backend's lone surrogates (an unpaired `\\ud800` escape, which JSON allows) in its listings and results: served with
U+FFFD in their place, an item named by one dropped, every other tool still listed and the gateway answering, over
HTTP in both protocol eras, over `vmcp serve --stdio`, and through find_tool. Before, one such description failed
`tools/list` for every client (a 500 for a 2025-11-25 client, a line the SDK's client could not parse for a 2026-07-28
one), and a result holding one made its POST a 500. Real gateway processes, a real stdio backend written here (its
answers padded past `PARSE_STDLIB_BYTES`: shorter lines the stdio reader parses with pydantic, which refuses the
escape outright) and the SDK's client."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, stdio_gateway, write_config
from vmcp_opt.backends.lone_surrogates import mend
from vmcp_opt.backends.stdio import PARSE_STDLIB_BYTES

pytestmark = [pytest.mark.anyio]

LONE = "\ud800"
MENDED = "\ufffd"
# A stdio backend answering by hand, every text it is told to spoil (SPOIL, comma-separated places) ending in a lone
# surrogate, every answer padded (PAD characters in its `_meta`) past the length the gateway parses with pydantic.
BACKEND = r"""
import json, os, sys
PAD = "p" * int(os.environ["PAD"])
SPOIL = os.environ["SPOIL"].split(",")
def s(text, where):
    return text + "\ud800x" if where in SPOIL else text
TOOLS = [
    {"name": "plain", "description": "fine", "inputSchema": {"type": "object"}},
    {"name": "weird", "description": s("weird", "tools"),
     "inputSchema": {"type": "object", "properties": {s("q", "tools"): {"type": "string", "description": s("q", "tools")}}}},
    {"name": s("named", "names"), "description": "its name is spoilt", "inputSchema": {"type": "object"}},
]
PROMPTS = [{"name": "p", "description": s("d", "prompts")}, {"name": s("pn", "names"), "description": "x"}]
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request:
        continue
    method = request.get("method")
    if method == "initialize":
        capabilities = {"tools": {}, "resources": {}, "prompts": {}}
        result = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": {"name": "s", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": s("output", "call")}]}
    elif method == "resources/list":
        result = {"resources": [{"uri": "mem://a", "name": s("a", "resources")}]}
    elif method == "resources/templates/list":
        result = {"resourceTemplates": []}
    elif method == "resources/read":
        result = {"contents": [{"uri": "mem://a", "text": s("r", "read")}]}
    elif method == "prompts/list":
        result = {"prompts": PROMPTS}
    elif method == "prompts/get":
        result = {"messages": [{"role": "user", "content": {"type": "text", "text": s("m", "get")}}]}
    elif method == "ping":
        result = {}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}}), flush=True)
        continue
    result["_meta"] = {"pad": PAD}
    print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}), flush=True)
"""
EVERYWHERE = "tools,names,call,resources,read,prompts,get"


def _config(directory: Path, *, optimizer: bool = False, pad: int = PARSE_STDLIB_BYTES + 1024) -> Path:
    """`pad`: past `PARSE_STDLIB_BYTES` the stdio reader parses a line with `json`, else with pydantic (which
    refuses the escape: such a line is read again with `json`)."""
    script = directory / "spoilt_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    env = {"PAD": str(pad), "SPOIL": EVERYWHERE}
    spoilt = {"name": "odd", "command": sys.executable, "args": [str(script)], "env": env}
    config: dict[str, Any] = {"backends": [spoilt, demo_backend("notes")]}
    if optimizer:
        config["optimizer"] = {"enabled": True, "index_dir": str(directory / "indexes")}
    return write_config(directory, config)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["long lines", "short lines"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    pad = PARSE_STDLIB_BYTES + 1024 if request.param == "long lines" else 0
    with running_gateway(_config(tmp_path_factory.mktemp("lone-surrogates"), pad=pad)) as running:
        yield running


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_lone_surrogate_in_one_backends_tools_leaves_the_listing_whole_and_mended(
    gateway: Gateway, mode: Any
) -> None:
    async with Client(gateway.url, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert {"odd_plain", "odd_weird", "notes_save_note"} <= tools.keys()
    assert not [name for name in tools if name.startswith("odd_named")]  # a name no client could send back
    weird = tools["odd_weird"]
    assert weird.description == f"weird{MENDED}x"
    assert weird.input_schema["properties"] == {f"q{MENDED}x": {"type": "string", "description": f"q{MENDED}x"}}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_lone_surrogate_in_a_tools_result_reaches_the_client_as_the_replacement_character(
    gateway: Gateway, mode: Any
) -> None:
    async with Client(gateway.url, mode=mode) as client:
        result = await client.call_tool("odd_weird", {})
        notes = await client.call_tool("notes_save_note", {"title": "t", "text": "kept"})
    assert not result.is_error
    assert [block.text for block in result.content if isinstance(block, types.TextContent)] == [f"output{MENDED}x"]
    assert not notes.is_error


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_lone_surrogates_in_resources_and_prompts_are_mended_and_a_prompt_named_by_one_dropped(
    gateway: Gateway, mode: Any
) -> None:
    async with Client(gateway.url, mode=mode) as client:
        resources = {resource.uri: resource for resource in (await client.list_resources()).resources}
        read = await client.read_resource("mem://a")
        prompts = {prompt.name: prompt for prompt in (await client.list_prompts()).prompts}
        got = await client.get_prompt("odd_p")
    assert resources["mem://a"].name == f"a{MENDED}x"
    assert [getattr(content, "text", None) for content in read.contents] == [f"r{MENDED}x"]
    assert prompts["odd_p"].description == f"d{MENDED}x"
    assert "notes_summarize_notes" in prompts
    assert not [name for name in prompts if name.startswith("odd_pn")]
    assert [message.content.text for message in got.messages if isinstance(message.content, types.TextContent)] == [
        f"m{MENDED}x"
    ]


def test_the_gateway_logs_what_it_mended_and_dropped_without_writing_a_surrogate(gateway: Gateway) -> None:
    log = gateway.output()
    assert "backend odd: tools/list: " in log and "served with U+FFFD in their place" in log
    assert "backend odd: tool 'named\\ud800x' dropped: its name holds a lone surrogate" in log
    assert "Logging error" not in log and "Traceback" not in log


def _send(pipe: IO[bytes], *messages: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    pipe.flush()


def _answers(out: IO[bytes], ids: set[object]) -> dict[object, dict[str, Any]]:
    """The answers to `ids` (each line checked to be UTF-8 a strict parser takes), within a generous deadline."""
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    threading.Thread(target=lambda: [lines.put(raw) for raw in iter(out.readline, b"")], daemon=True).start()
    found: dict[object, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while ids - found.keys():
        raw = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        text = raw.decode("utf-8")  # strict: a surrogate written raw is no UTF-8
        message = types.jsonrpc_message_adapter.validate_json(text)  # as the SDK's client reads: no lone escapes
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            found[message.id] = json.loads(text)
    return found


def test_over_stdio_the_listing_and_a_result_are_lines_the_client_can_read(tmp_path: Path) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": "init",
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    with stdio_gateway(_config(tmp_path), tmp_path / "stderr.log") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        _send(proc.stdin, initialize, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(proc.stdin, {"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        call = {
            "jsonrpc": "2.0",
            "id": "call",
            "method": "tools/call",
            "params": {"name": "odd_weird", "arguments": {}},
        }
        _send(proc.stdin, call)
        answers = _answers(proc.stdout, {"init", "list", "call"})
        assert proc.poll() is None
    tools = {tool["name"]: tool for tool in answers["list"]["result"]["tools"]}
    assert tools["odd_weird"]["description"] == f"weird{MENDED}x"
    assert "notes_save_note" in tools
    assert answers["call"]["result"]["content"] == [{"type": "text", "text": f"output{MENDED}x"}]


async def test_find_tool_finds_and_shows_a_mended_description(tmp_path: Path) -> None:
    with running_gateway(_config(tmp_path, optimizer=True)) as running:
        async with Client(running.url) as client:
            result = await client.call_tool("find_tool", {"query": "weird", "limit": 3})
            called = await client.call_tool("call_tool", {"tool_name": "odd_weird", "arguments": {}})
        assert running.proc.poll() is None
    assert not result.is_error
    text = "".join(block.text for block in result.content if isinstance(block, types.TextContent))
    found = {tool["name"]: tool for tool in json.loads(text)["tools"]}
    assert found["odd_weird"]["description"] == f"weird{MENDED}x"
    assert [block.text for block in called.content if isinstance(block, types.TextContent)] == [f"output{MENDED}x"]


def test_mending_keeps_paired_surrogates_and_mends_keys_in_place() -> None:
    data: dict[str, Any] = {"ok": "\U0001f600 and é", f"k{LONE}": [f"a{LONE}", 1, None, {"x": "\udfff"}]}
    assert mend(data) == 3
    assert data == {"ok": "\U0001f600 and é", f"k{MENDED}": [f"a{MENDED}", 1, None, {"x": MENDED}]}
    assert mend(data) == 0
