"""A long list answered over stdio: written as the SDK's writer would write it (the same bytes, every tool, one page,
a cursor refused), a request sent right behind it answered too, and its encoding done off the event loop: the
loop runs while a list's line is being encoded. Real `vmcp serve --stdio` processes over a real stdio backend, the
client's lines by hand and the SDK's own client; the transport alone over a real pipe for the loop."""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCResponse
from pydantic import BaseModel, model_serializer

from tests.support import EXAMPLES, stdio_gateway, write_config
from vmcp_opt.server.held_answers import WaitingAnswers
from vmcp_opt.server.in_flight import InFlight
from vmcp_opt.server.list_answers import SLICE, SharedItems, encoded_items, session_form
from vmcp_opt.server.stdio import AnswerTracker
from vmcp_opt.server.stdio_pipes import ClientLines, ClientOutput, client_transport

SHARED_TOOLS_SERVER = EXAMPLES / "backends" / "shared_tools_server.py"
ITEMS = 3 * SLICE + 17  # several slices, the last one short
NAMES = {f"shared_echo_{i}" for i in range(ITEMS)} | {"shared_add_tool"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": "init",
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _config(tmp_path: Path) -> Path:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([f"echo_{i}" for i in range(ITEMS)]), encoding="utf-8")
    backend = {
        "name": "shared",
        "command": sys.executable,
        "args": [str(SHARED_TOOLS_SERVER)],
        "env": {"SHARED_TOOLS_FILE": str(tools_file)},
    }
    # startup_wait: a first list waits for the backend however loaded the machine (not a list without it).
    config = {"backends": [backend], "optimizer": {"enabled": False}, "server": {"startup_wait": 60}}
    return write_config(tmp_path, config)


def _send(pipe: IO[bytes], *messages: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    pipe.flush()


def _lines(out: IO[bytes]) -> queue.SimpleQueue[bytes]:
    """`out`'s lines as they come, read on a thread ("" at its end): `select` on a buffered pipe misses a line
    already read into its buffer with the one before it."""
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        for raw in iter(out.readline, b""):
            lines.put(raw)
        lines.put(b"")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _answers(lines: queue.SimpleQueue[bytes], ids: set[object]) -> dict[object, bytes]:
    """The raw lines answering `ids`, whatever their order (notifications skipped), within a generous deadline."""
    found: dict[object, bytes] = {}
    deadline = time.monotonic() + 60
    while ids - found.keys():
        try:
            raw = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no answer under {ids - found.keys()}") from None
        assert raw, "the gateway closed stdout"
        message = json.loads(raw)
        if "method" not in message:
            assert message["id"] in ids, message
            found[message["id"]] = raw
    return found


def _as_the_sdk_writes(line: bytes) -> bytes:
    """The line the SDK's stdio writer makes of the message `line` holds."""
    message = JSONRPCResponse.model_validate_json(line)
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


def test_a_long_list_over_stdio_is_the_sdks_line_whole_and_a_ping_behind_it_is_answered(tmp_path: Path) -> None:
    with stdio_gateway(_config(tmp_path), tmp_path / "stderr.log") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = _lines(proc.stdout)
        _send(proc.stdin, INITIALIZE)
        _answers(lines, {"init"})
        _send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(
            proc.stdin,
            {"jsonrpc": "2.0", "id": "list", "method": "tools/list"},
            {"jsonrpc": "2.0", "id": "ping", "method": "ping"},
        )
        first = _answers(lines, {"list", "ping"})
        _send(
            proc.stdin,
            {"jsonrpc": "2.0", "id": "again", "method": "tools/list"},
            {"jsonrpc": "2.0", "id": "paged", "method": "tools/list", "params": {"cursor": "2"}},
        )
        second = _answers(lines, {"again", "paged"})
    listed, again = first["list"], second["again"]
    assert json.loads(first["ping"]) == {"jsonrpc": "2.0", "id": "ping", "result": {}}
    assert listed == _as_the_sdk_writes(listed)
    result = json.loads(listed)["result"]
    assert {tool["name"] for tool in result["tools"]} == NAMES and "nextCursor" not in result
    assert again == listed.replace(b'"id":"list"', b'"id":"again"', 1)  # the same answer, built once
    assert json.loads(second["paged"])["error"]["code"] == types.INVALID_PARAMS


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_sdks_client_lists_every_tool_of_a_long_catalogue_over_stdio(tmp_path: Path, mode: Any) -> None:
    gateway = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(_config(tmp_path))]
    )

    async def listed() -> tuple[list[str], list[str]]:
        async with Client(gateway, mode=mode) as client:
            tools = (await client.list_tools()).tools
            return [tool.name for tool in tools], [tool.name for tool in (await client.list_tools()).tools]

    first, again = anyio.run(listed)
    assert set(first) == NAMES and again == first


class _Gate(BaseModel):
    """A value whose encoding, once started, waits for the event loop to say it ran (at most 10 s), and says whether
    it did: encoded on the loop, it holds the loop, which then cannot say so."""

    started: Any = None
    loop_ran: Any = None

    @model_serializer
    def _encoded(self) -> str:
        self.started.set()
        return "loop ran" if self.loop_ran.wait(timeout=10) else "loop held"


def test_a_long_lists_line_is_encoded_while_the_event_loop_runs() -> None:
    """The SDK's writer encoded every message on the event loop: there, the gate's encoding waited out its bound."""
    read_end, write_end = os.pipe()
    gate = _Gate(started=threading.Event(), loop_ran=threading.Event())
    tools: list[dict[str, Any]] = [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(ITEMS)]
    tools[-1]["description"] = gate
    answer = JSONRPCResponse(jsonrpc="2.0", id=1, result={"tools": tools})
    got: list[bytes] = []

    def read_line() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            got.append(pipe.readline())

    reader = threading.Thread(target=read_line, daemon=True)
    reader.start()

    async def scenario() -> None:
        async with client_transport(ClientLines(lambda: ""), ClientOutput(write_end)) as (_, write):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(write.send, SessionMessage(answer))
                await anyio.to_thread.run_sync(gate.started.wait)
                gate.loop_ran.set()  # runs at once if the encoding left the loop; after it, if not
            await write.aclose()

    anyio.run(scenario)
    reader.join(timeout=60)
    os.close(write_end)
    [line] = got
    listed = json.loads(line)["result"]["tools"]
    assert listed[-1]["description"] == "loop ran"
    assert listed[:-1] == tools[:-1] and len(listed) == ITEMS


class _Watched(dict[str, Any]):
    """A tool whose keys a size walk reads (`json_size`), which says so: the loop walked 50,000 of them for ~1 s."""

    walked: list[str] = []

    def keys(self) -> Any:
        self.walked.append(self["name"])
        return super().keys()


def test_a_long_list_waiting_behind_an_untaken_write_is_measured_by_its_shared_json_not_walked() -> None:
    """stdio counts an answer waiting behind a write its client has not taken (`limits.held_answer_bytes`); a long
    list's size is its shared JSON's, found without walking its items on the event loop."""
    items = SharedItems([_Watched(name=f"t{i}", inputSchema={"type": "object"}) for i in range(ITEMS)])
    encoded = encoded_items(items, "tools", session_form)
    assert encoded is not None
    items.bodies[session_form] = encoded
    answer = JSONRPCResponse(jsonrpc="2.0", id=1, result={"tools": items, "_meta": {"k": "v"}})
    waiting = WaitingAnswers(64 * 2**20, lambda: 1)  # a write is untaken: every answer is measured

    async def scenario() -> int:
        inner_send, inner_receive = anyio.create_memory_object_stream[SessionMessage](1)
        sizes: list[int] = []
        take = waiting.take
        waiting.take = lambda result: sizes.append(take(result)) or sizes[-1]  # type: ignore[method-assign]
        async with inner_send, inner_receive, anyio.create_task_group() as refusals:
            tracker = AnswerTracker(cast(Any, inner_send), InFlight(1.0, 10), waiting, refusals)
            await tracker.send(SessionMessage(answer))
            assert (await inner_receive.receive()).message is answer
        return sizes[0]

    size = anyio.run(scenario)
    assert _Watched.walked == []
    body = len(session_form(answer))
    assert body * 0.95 <= size <= body * 1.05  # about its JSON's size, as a walk would say
