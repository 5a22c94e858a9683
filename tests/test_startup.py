"""The first requests after launch: they wait (bounded) for the backends' first listing and say what is
still starting; stdio answers a malformed line like HTTP does. Real `vmcp serve` processes and clients."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.support import demo_backend, running_gateway, stop_process, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A backend that never answers the handshake: it is "starting" until `timeouts.connect` (an hour here).
NEVER_READY = {"name": "slow", "command": sys.executable, "args": ["-c", "import time; time.sleep(3600)"]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio_gateway(config: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)])


def optimizer_on(tmp_path: Path) -> dict[str, Any]:
    return {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": 60}


async def test_find_tool_right_after_a_stdio_launch_answers_with_the_backends_tools(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer_on(tmp_path)}
    )  # startup_wait 60 s (tests/support.py): the wait ends when the backend has listed its tools
    async with Client(stdio_gateway(config)) as client:
        result = await client.call_tool("find_tool", {"query": "save a note"})
    answer = result.structured_content
    assert answer is not None
    assert "notes_save_note" in [tool["name"] for tool in answer["tools"]]
    assert "backends_starting" not in answer
    assert answer["tokens"]["full_tool_list"] > 0
    # A cold index: the first find_tool waited for the model and the vectors (optimizer.vector_wait, 60 s
    # here) instead of ranking by keywords only.
    assert answer["ranking"] == "hybrid" and answer["tools"][0]["name"] == "notes_save_note"


async def test_find_tool_names_the_backends_still_starting_after_the_wait(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backends": [NEVER_READY],
            "optimizer": optimizer_on(tmp_path),
            "server": {"startup_wait": 0.2},
            "timeouts": {"connect": 3600},
        },
    )
    async with Client(stdio_gateway(config)) as client:
        result = await client.call_tool("find_tool", {"query": "save a note"})
    answer = result.structured_content
    assert answer is not None
    assert answer["tools"] == []
    assert answer["backends_starting"] == ["slow"]
    assert "backends still starting: slow" in answer["note"]


async def test_tools_list_right_after_an_http_start_waits_for_the_backends(tmp_path: Path) -> None:
    """Optimizer off: tools/list is the backends' tools, so the first one waits for their listing."""
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    with running_gateway(config, wait_ready=False) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
    assert "notes_save_note" in names


async def test_the_gateway_serves_the_ready_backends_when_one_is_slower_than_the_wait(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backends": [NEVER_READY],
            "server": {"startup_wait": 0.2},
            "timeouts": {"connect": 3600},
        },
    )
    with running_gateway(config, wait_ready=False) as gateway:
        async with Client(gateway.url) as client:
            assert (await client.list_tools()).tools == []  # answered after the wait, not after an hour
    assert "backends still starting after 0.2s: slow" in gateway.output()


def read_lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, b""):
            lines.put(line.decode())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_a_malformed_line_on_stdio_gets_a_json_rpc_error_and_the_gateway_keeps_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    try:
        answers = read_lines(proc.stdout)

        def exchange(line: bytes) -> dict[str, Any]:
            assert proc.stdin is not None
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            answer: dict[str, Any] = json.loads(answers.get(timeout=60))
            return answer

        not_json = exchange(b"{not json")
        assert not_json["id"] is None
        assert not_json["error"]["code"] == -32700
        not_a_message = exchange(b'{"jsonrpc": "2.0", "id": 1, "nomethod": true}')
        assert not_a_message["error"]["code"] == -32600
        # The SDK reads a request with an unusable id as a notification, which gets no answer: here it gets one.
        for request_id, kind in ((b"null", "null"), (b"true", "a boolean")):
            refused = exchange(b'{"jsonrpc": "2.0", "id": ' + request_id + b', "method": "ping"}')
            assert refused["id"] is None and refused["error"]["code"] == -32600
            assert refused["error"]["message"] == f"Invalid Request: id must be a string or an integer, not {kind}"
        initialize = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        assert exchange(json.dumps(initialize).encode())["id"] == 2
    finally:
        proc.stdin.close()
        stop_process(proc)


def test_a_backend_still_starting_is_not_unhealthy_and_its_missing_tools_are_reported_once_it_fails(
    tmp_path: Path,
) -> None:
    """A slow first connection is "starting": no "unhealthy" per health check, no workflow warning about its
    tools until its first attempt has ended (here: failed after `timeouts.connect`)."""
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes"), NEVER_READY],
            "server": {"startup_wait": 0.2},
            "timeouts": {"connect": 4},
            "health": {"interval": 0.2},
            "workflows": [{"name": "wf", "description": "d", "steps": [{"id": "a", "tool": "slow_anything"}]}],
        },
    )
    warning = "workflows[0].steps[0].tool: unknown tool 'slow_anything'"
    failed = "did not connect within 4s"
    with running_gateway(config, wait_ready=False) as gateway:
        deadline = time.monotonic() + 120
        while not (warning in gateway.output() and failed in gateway.output()):
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.1)
        output = gateway.output()
    # About twenty health checks ran while it was starting; none called it unhealthy.
    assert "not connected (connecting" not in output
    assert output.index(warning) > output.index(failed)
    assert output.count(warning) == 1


def test_calls_running_when_the_client_closes_stdin_are_answered_before_the_gateway_stops(tmp_path: Path) -> None:
    """`cat requests | vmcp serve --stdio`: the input ends while calls still run, and each gets its result (the
    SDK alone answered them "Connection closed"); the process then ends by itself."""
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}})
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "piped", "version": "0"}}
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *(
            {
                "jsonrpc": "2.0",
                "id": 10 + i,
                "method": "tools/call",
                "params": {"name": "notes_slow_echo", "arguments": {"message": f"m{i}", "seconds": 0.5}},
            }
            for i in range(3)
        ),
    ]
    piped = "".join(json.dumps(request) + "\n" for request in requests).encode()
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        input=piped,
        capture_output=True,
        timeout=120,
    )
    messages = [json.loads(line) for line in done.stdout.decode().splitlines()]
    answers = {message["id"]: message for message in messages if "id" in message}  # notifications have none
    for i in range(3):
        assert "result" in answers[10 + i], answers[10 + i]
        assert f"m{i}" in json.dumps(answers[10 + i]["result"])
    assert done.returncode == 0, done.stderr.decode()[-2000:]
