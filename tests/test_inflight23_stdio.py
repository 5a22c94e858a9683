"""A stdio client's requests in flight are bounded (`limits.requests_in_flight.per_caller`): a client that writes
many slow calls without reading an answer made the gateway start a task for every one it read, and send them all
to the backend at once (50,000 calls: the gateway's RSS past 700 MB in 30 s). Now a request past the bound is
answered at once with the error HTTP gives, and reading goes on (the client's answers to the gateway's own
questions, which running calls wait for, must get through: a pipe held shut until a call ended deadlocked them).
A real gateway process, a real stdio backend that counts its calls, the client's pipes by hand.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from tests.support import stdio_gateway, write_config

PER_CALLER = 5
CALLS = 20
# Each call's padding: twenty of them (1 MB) cannot sit in the pipe and the gateway's read buffers, so a
# gateway that stops reading keeps the client's writer blocked, and one that reads everything frees it at once.
PADDING = 50_000

# Holds each call until the file `gate` exists; one line in `<gate>.arrived` per call that reached it.
COUNTING_BACKEND = '''
import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("counting")
state = {"now": 0, "most": 0}


@server.tool()
async def held(gate: str, pad: str = "") -> str:
    """Wait until the file `gate` exists."""
    state["now"] += 1
    state["most"] = max(state["most"], state["now"])
    with open(gate + ".arrived", "a", encoding="utf-8") as arrivals:
        arrivals.write("call\\n")
    try:
        while not await anyio.Path(gate).exists():
            await anyio.sleep(0.05)
    finally:
        state["now"] -= 1
    return "released"


@server.tool()
def most() -> int:
    """The most calls of `held` this backend held at once."""
    return state["most"]


if __name__ == "__main__":
    server.run()
'''


def counting_backend(directory: Path) -> dict[str, Any]:
    script = directory / "counting_backend.py"
    script.write_text(COUNTING_BACKEND, encoding="utf-8")
    return {"name": "c", "command": sys.executable, "args": [str(script)]}


def arrivals(gate: Path) -> int:
    path = gate.with_name(gate.name + ".arrived")
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def send(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def test_a_client_flooding_calls_has_at_most_per_caller_at_the_backend_and_the_rest_refused_at_once(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    config = write_config(
        tmp_path,
        {"backends": [counting_backend(tmp_path)], "limits": {"requests_in_flight": {"per_caller": PER_CALLER}}},
    )
    with stdio_gateway(config, tmp_path / "stderr.log") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        client = {"name": "flood", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        assert json.loads(proc.stdout.readline())["id"] == 0
        send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})

        def flood(pipe: IO[bytes]) -> None:
            arguments = {"gate": str(gate), "pad": "x" * PADDING}
            for request_id in range(1, CALLS + 1):
                call = {"name": "c_held", "arguments": arguments}
                send(pipe, {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call})

        writer = threading.Thread(target=flood, args=(proc.stdin,), daemon=True)
        writer.start()
        answers: dict[int, Any] = {}
        while len(answers) < CALLS - PER_CALLER:  # the calls past the bound, answered while the first ones run
            message = json.loads(proc.stdout.readline())
            if "id" in message:
                answers[message["id"]] = message
        writer.join(timeout=60)
        assert arrivals(gate) <= PER_CALLER  # before the fix all twenty reached the backend
        for answer in answers.values():
            assert answer["error"]["data"]["limit"] == "limits.requests_in_flight.per_caller", answer
            assert f"{PER_CALLER} requests in flight" in answer["error"]["message"]
        send(proc.stdin, {"jsonrpc": "2.0", "id": 98, "method": "ping"})  # reading goes on; ping is not bounded
        while (message := json.loads(proc.stdout.readline())).get("id") != 98:
            pass
        assert message["result"] == {}
        deadline = time.monotonic() + 60  # a guard against a hang, not a measure
        while arrivals(gate) < PER_CALLER:  # the calls within the bound all reach the backend
            assert time.monotonic() < deadline, f"{arrivals(gate)} calls reached the backend in 60 s"
            time.sleep(0.02)
        gate.touch()  # the held calls end
        while len(answers) < CALLS:
            message = json.loads(proc.stdout.readline())
            if "id" in message:
                answers[message["id"]] = message
        released = [a for a in answers.values() if "result" in a]
        assert len(released) == PER_CALLER
        assert all(answer["result"]["content"][0]["text"] == "released" for answer in released)
        send(proc.stdin, {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": "c_most"}})
        while (message := json.loads(proc.stdout.readline())).get("id") != 99:
            pass
        assert message["result"]["structuredContent"]["result"] == PER_CALLER
