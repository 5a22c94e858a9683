"""A small MCP server for demos and tests: notes, a slow tool, and tools that appear at run time.

Runs over stdio (default) or streamable HTTP:
    python examples/backends/demo_server.py                       # stdio
    python examples/backends/demo_server.py --http --port 9001    # http://127.0.0.1:9001/mcp
    python examples/backends/demo_server.py --sse --port 9002     # http://127.0.0.1:9002/sse (legacy transport)
Two instances under different backend names collide on every name, which is what the conflict
resolution tests need; `add_tool` makes the tool list change, which the list_changed tests need.
"""

from __future__ import annotations

import argparse
import os
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("demo-notes", instructions="Keeps short notes in memory; for demos and tests.")
notes: dict[str, str] = {}
counters = {"slow_echo_cancelled": 0}


@server.tool()
def save_note(title: str, text: str) -> str:
    """Save a short note under a title, replacing any note with the same title."""
    notes[title] = text
    return f"saved note '{title}' ({len(text)} characters)"


@server.tool()
def search_notes(query: str) -> list[str]:
    """Search saved notes by words in their title or text; returns matching titles."""
    words = query.lower().split()
    return [title for title, text in notes.items() if any(w in (title + " " + text).lower() for w in words)]


@server.tool()
async def slow_echo(message: str, seconds: float = 1.0) -> str:
    """Echo a message after waiting the given number of seconds (for timeout and failure tests)."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        counters["slow_echo_cancelled"] += 1  # the client's cancellation reached this backend
        raise
    return message


@server.tool()
def whoami() -> dict[str, object]:
    """Report this server's name (DEMO_NAME), process id and start time (tests use it to see routing and restarts)."""
    return {"name": os.environ.get("DEMO_NAME", "demo"), "pid": os.getpid(), "started": STARTED, **counters}


@server.tool()
async def add_tool(name: str, description: str, ctx: Context) -> str:
    """Register a new echo tool at run time, so the backend's tool list changes."""

    def dynamic(text: str) -> str:
        return f"{name}: {text}"

    server.add_tool(dynamic, name=name, description=description)
    await ctx.notify_tools_changed()
    return f"added tool '{name}'"


@server.resource("notes://all", mime_type="application/json")
def all_notes() -> dict[str, str]:
    """Every saved note."""
    return notes


@server.resource("notes://note/{title}")
def one_note(title: str) -> str:
    """One note by title."""
    return notes.get(title, "")


@server.prompt()
def summarize_notes(style: str = "short") -> str:
    """Ask the model to summarise all saved notes."""
    return f"Summarise these notes in a {style} style: {notes}"


STARTED = time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--sse", action="store_true", help="serve the legacy HTTP+SSE transport (/sse)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    if args.sse:
        server.run("sse", host=args.host, port=args.port)
    elif args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run()


if __name__ == "__main__":
    main()
