"""Big tools/call arguments and big results pass through whole (F9), through a real gateway process, a real stdio
backend writing raw JSON-RPC lines, and raw HTTP.

A tools/call whose arguments pass `INLINE_CHARS` is handed to the SDK with its arguments as they are, not copied on
the event loop (backends/big_requests.py): the backend must still get every value, and JSON's spelling of what JSON
lacks (NaN becomes null) as before. A result of an image and 20,000 text blocks reaches the client complete and in
order, while a small call made meanwhile is answered first: the backend holds the big answer until the test has the
small one. How long the loop is held is a duration, which no ordering fact tells apart: the figures are in the
change's report, not asserted here.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest

from tests.support import raw_session, running_gateway, sse_messages, write_config
from vmcp_opt.backends.big_requests import as_given
from vmcp_opt.backends.results import INLINE_CHARS, json_size

# A stdio backend writing raw JSON-RPC lines. `count` answers what it got: how many items `x` held, their sum, and
# the JSON of `extra`. `blocks` says it got the call (a file), waits for the gate file, then answers an image and
# `n` text blocks.
BIG_SERVER = r"""
import json, os, sys, time

out = sys.stdout.buffer
STARTED, GATE = sys.argv[1], sys.argv[2]
TOOLS = [
    {"name": "count", "inputSchema": {"type": "object"}},
    {"name": "blocks", "inputSchema": {"type": "object"}},
]
IMAGE = "iVBORw0KGgo" * 100


def emit(obj):
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


def call(name, args):
    if name == "count":
        x = args.get("x", [])
        got = {"items": len(x), "sum": sum(item[0] for item in x), "extra": args.get("extra", "absent")}
        return {"content": [{"type": "text", "text": json.dumps(got)}]}
    open(STARTED, "w").close()
    while not os.path.exists(GATE):
        time.sleep(0.01)
    texts = [{"type": "text", "text": f"block {i}"} for i in range(args["n"])]
    return {"content": [{"type": "image", "data": IMAGE, "mimeType": "image/png"}, *texts]}


for line in sys.stdin:
    message = json.loads(line)
    mid, method = message.get("id"), message.get("method")
    if mid is None:
        continue
    if method == "initialize":
        result = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "big", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = call(message["params"]["name"], message["params"].get("arguments") or {})
    else:
        result = {}
    emit({"jsonrpc": "2.0", "id": mid, "result": result})
"""

ITEMS = 30_000  # ~290 KB of arguments: far past INLINE_CHARS; 60,000 values, within limits.max_request_values
BLOCKS = 20_000  # with the image, within limits.max_result_values
DEADLINE = 120.0

slow = pytest.mark.slow


def big_backend(tmp_path: Path, name: str) -> dict[str, Any]:
    """The backend `name`: its `blocks` call writes `<name>-started`, then waits for the file `gate`."""
    script = tmp_path / "big_server.py"
    script.write_text(BIG_SERVER, encoding="utf-8")
    args = [str(script), str(tmp_path / f"{name}-started"), str(tmp_path / "gate")]
    return {"name": name, "command": sys.executable, "args": args}


def gateway_config(tmp_path: Path) -> dict[str, Any]:
    return {
        # Two processes: one answers a small call while the other holds its big answer (each reads one line at a time).
        "backends": [big_backend(tmp_path, "big"), big_backend(tmp_path, "small")],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
        "health": {"interval": 3600},  # the backend's state is the calls' doing alone
        "timeouts": {"call": DEADLINE},
    }


def call_body(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    # json.dumps spells NaN as `NaN`, which the gateway's parser takes (as the SDK's does).
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(message).encode()


def post_call(url: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The tools/call result from a POST's answer, plain JSON or SSE."""
    answer = httpx2.post(url, content=body, headers=headers, timeout=DEADLINE)
    assert answer.status_code == 200, answer.text[:500]
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [message for _, message in sse_messages(iter(answer.text.splitlines())) if message]
        message = next(message for message in messages if "id" in message)
    else:
        message = answer.json()
    assert "result" in message, str(message)[:500]
    result: dict[str, Any] = message["result"]
    return result


def counted(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isError"), result
    got: dict[str, Any] = json.loads(result["content"][0]["text"])
    return got


def wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE}s"
        time.sleep(0.02)


@slow
def test_big_arguments_reach_the_backend_whole_direct_and_through_call_tool(tmp_path: Path) -> None:
    x = [[i] for i in range(ITEMS)]
    arguments = {"x": x, "extra": {"nan": math.nan, "nested": [{"a": [1, 2.5, None, True]}]}}
    expected = {
        "items": ITEMS,
        "sum": ITEMS * (ITEMS - 1) // 2,
        "extra": {"nan": None, "nested": [{"a": [1, 2.5, None, True]}]},
    }
    with running_gateway(write_config(tmp_path, gateway_config(tmp_path))) as gateway:
        headers = raw_session(gateway.url)
        direct = post_call(gateway.url, headers, call_body(2, "big_count", arguments))
        assert counted(direct) == expected
        through = {"tool_name": "big_count", "arguments": arguments}
        optimized = post_call(gateway.url, headers, call_body(3, "call_tool", through))
        assert counted(optimized) == expected
        small = post_call(gateway.url, headers, call_body(4, "big_count", {"x": [[7]]}))
        assert counted(small) == {"items": 1, "sum": 7, "extra": "absent"}


@slow
def test_a_many_block_result_comes_whole_and_a_small_call_meanwhile_is_answered(tmp_path: Path) -> None:
    with running_gateway(write_config(tmp_path, gateway_config(tmp_path))) as gateway:
        big_headers, small_headers = raw_session(gateway.url), raw_session(gateway.url)
        answers: dict[str, Any] = {}

        def big_call() -> None:
            try:
                answers["big"] = post_call(gateway.url, big_headers, call_body(2, "big_blocks", {"n": BLOCKS}))
            except BaseException as exc:  # re-raised below, in the test's thread
                answers["failure"] = exc

        caller = threading.Thread(target=big_call, daemon=True)
        caller.start()
        try:
            wait_for(tmp_path / "big-started", "the backend got the big call")
            small = post_call(gateway.url, small_headers, call_body(3, "small_count", {"x": [[1], [2]]}))
            assert "big" not in answers  # the backend holds the big answer until the gate opens, below
            assert counted(small) == {"items": 2, "sum": 3, "extra": "absent"}
        finally:
            (tmp_path / "gate").touch()
            caller.join(DEADLINE)
        assert "failure" not in answers, answers.get("failure")
        content = answers["big"]["content"]
        assert len(content) == BLOCKS + 1
        assert content[0]["type"] == "image" and content[0]["mimeType"] == "image/png"
        assert [block["text"] for block in content[1:]] == [f"block {i}" for i in range(BLOCKS)]


# --- the pieces, without processes ------------------------------------------------------------------------------


def sdk_wire(request: types.CallToolRequest) -> str:
    """The JSON-RPC line a stdio transport writes for `request`, built as the SDK's send builds it."""
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    message = types.JSONRPCRequest(jsonrpc="2.0", id=1, method=data["method"], params=data["params"])
    return message.model_dump_json(by_alias=True, exclude_unset=True)


def test_a_call_with_big_arguments_is_sent_as_the_sdk_would_send_it() -> None:
    arguments = {"x": [[i] for i in range(20_000)], "odd": (1, math.inf), "nan": math.nan}
    for meta in (None, {"progressToken": 7}):
        params = types.CallToolRequestParams(name="t", arguments=arguments, _meta=meta)
        request = types.CallToolRequest(params=params)
        given = as_given(request)
        assert given is not request and isinstance(given, types.CallToolRequest)
        assert sdk_wire(given) == sdk_wire(request)
        dumped = given.model_dump(by_alias=True, mode="json", exclude_none=True)
        assert dumped["params"]["arguments"] is request.params.arguments  # not copied
        assert given.model_dump() == request.model_dump()  # any other dump is pydantic's own


def test_small_calls_and_other_requests_go_as_they_are() -> None:
    small = types.CallToolRequest(params=types.CallToolRequestParams(name="t", arguments={"x": [[1]] * 10}))
    bare = types.CallToolRequest(params=types.CallToolRequestParams(name="t"))
    prompt = types.GetPromptRequest(params=types.GetPromptRequestParams(name="p", arguments={"a": "b" * 100_000}))
    for request in (small, bare, prompt):
        assert as_given(request) is request


def walked_size(value: Any) -> int:
    """`json_size` without a cap: the whole walk."""
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, dict):
        return 8 + sum(walked_size(key) + walked_size(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return 8 + sum(walked_size(item) for item in value)
    return 8


def test_json_size_passes_a_long_container_at_once_and_is_exact_below_the_cap() -> None:
    values: list[Any] = [
        ["", "", ""],
        {"": ""},
        [[i] for i in range(1000)],
        {"k": ["x" * 50] * 30, "m": {str(i): i for i in range(40)}},
        [""] * 5000,
    ]
    for value in values:
        size = walked_size(value)
        for cap in (0, 10, size // 4, size // 2, size - 1, size, size + 1, 10 * size):
            assert json_size(value, cap) == (size if size <= cap else None), (value, cap)
    assert json_size([[i] for i in range(400_000)], INLINE_CHARS) is None
