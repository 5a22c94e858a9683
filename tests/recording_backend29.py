"""A stdio MCP server (the SDK's) for tests/test_workflows29.py that records, one line each to the file $RECORD,
the calls it starts and those cancelled mid-call, and holds calls at a gate:

- `sleepy(tag, seconds)`: writes `start <tag>`, sleeps, then `end <tag>`; `cancelled <tag>` if cancelled first;
- `gated(tag)`: writes `gated <tag>` and answers once the file $GATE exists;
- `big(n)`: a JSON text of about `n` characters (a list of one string);
- `echo(text)`: `text`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("recording")
RECORD = Path(os.environ["RECORD"])
GATE = Path(os.environ.get("GATE", "/nonexistent"))


def record(*words: str) -> None:
    with RECORD.open("a", encoding="utf-8") as sink:
        sink.write(" ".join(words) + "\n")


@server.tool()
async def sleepy(tag: str, seconds: float = 120.0) -> str:
    """Sleeps `seconds`, recording its start and its end or cancellation."""
    record("start", tag)
    try:
        await anyio.sleep(seconds)
    except BaseException:
        record("cancelled", tag)
        raise
    record("end", tag)
    return f"slept {tag}"


@server.tool()
async def gated(tag: str) -> str:
    """Answers once the gate file exists."""
    record("gated", tag)
    gate = anyio.Path(GATE)
    while True:  # a file, not an event: the test that opens it is another process
        if await gate.exists():
            return "open"
        await anyio.sleep(0.05)


@server.tool()
def big(n: int = 1_000_000) -> str:
    """A JSON text of about n characters."""
    return json.dumps(["x" * n])


@server.tool()
def echo(text: str) -> str:
    """Echoes text."""
    return text


if __name__ == "__main__":
    server.run()
