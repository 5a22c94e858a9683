"""A listing page longer than the transport takes in ends its list there (F9), through a real gateway process, a
real stdio backend writing raw JSON-RPC lines and a real SDK client: the pages before it are served, with a
warning, and the backend stays in service. The page was an error for its request, which failed the whole backend:
it served no tools and restarted for good, reading the page again each time. Listing pages are not held to
`limits.max_result_values` either: their lists have budgets of their own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from tests.test_failure_recovery import backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CAP = 100_000  # limits.max_result_bytes: a line of 1,148,576 bytes at most, with the envelope's room
FIRST_PAGE = 2000  # tools on the first page: ~20,000 values, past the max_result_values set below

# A stdio backend listing its tools in two pages, or one (argv[1]: "second" or "first" is the page too long).
PAGES_SERVER = r"""
import json, sys

out = sys.stdout.buffer
LONG_PAGE = sys.argv[1]
FIRST_PAGE = int(sys.argv[2])


def emit(obj):
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


def tool(name, description="a tool"):
    return {"name": name, "description": description, "inputSchema": {"type": "object"}}


# 40 tools of 40 kB each: a page of 1.6 MB, past the line cap.
LONG = [tool(f"long{i}", "d" * 40_000) for i in range(40)]
FIRST = [tool(f"t{i}") for i in range(FIRST_PAGE)]

for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue
    if method == "initialize":
        result = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "pages", "version": "1"},
        }
        emit({"jsonrpc": "2.0", "id": mid, "result": result})
    elif method == "ping":
        emit({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "tools/list":
        cursor = (msg.get("params") or {}).get("cursor")
        if LONG_PAGE == "first":
            page = {"tools": LONG}
        elif cursor is None:
            page = {"tools": FIRST, "nextCursor": "2"}
        else:
            page = {"tools": LONG}
        emit({"jsonrpc": "2.0", "id": mid, "result": page})
    elif method == "tools/call":
        emit({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "fine"}]}})
    else:
        emit({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no"}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pages_config(tmp_path: Path, long_page: str) -> dict[str, Any]:
    script = tmp_path / "pages_server.py"
    script.write_text(PAGES_SERVER, encoding="utf-8")
    pages = {"name": "h", "command": sys.executable, "args": [str(script), long_page, str(FIRST_PAGE)]}
    return {
        "backends": [pages, demo_backend("demo")],
        "limits": {"max_result_bytes": CAP, "max_result_values": 1024},
        "health": {"interval": 3600},  # the backend's state is the listing's doing alone
    }


def assert_in_service(gateway: Any, tools: int) -> None:
    state = backend(gateway, "h")
    assert state["state"] == "ready" and state["restarts"] == 0, state
    assert state["tools"] == tools, state


async def test_a_page_past_the_line_cap_ends_the_list_with_the_pages_before_it(tmp_path: Path) -> None:
    with running_gateway(write_config(tmp_path, pages_config(tmp_path, "second"))) as gateway:
        assert_in_service(gateway, FIRST_PAGE)
        async with Client(gateway.url) as client:
            listed = await client.list_tools()
            names = {tool.name for tool in listed.tools}
            # The first page whole, past max_result_values (a listing is not counted); nothing of the second.
            assert {f"h_t{i}" for i in range(FIRST_PAGE)} <= names
            assert not any(name.startswith("h_long") for name in names)
            with anyio.fail_after(60):
                fine = await client.call_tool("h_t0", {})
            assert not fine.is_error and text(fine) == "fine"
        assert_in_service(gateway, FIRST_PAGE)
    log = gateway.output()
    assert "backend h: tools/list: a page was too large to take in (backend 'h' answered with" in log, log[-3000:]
    assert f"only the {FIRST_PAGE} items before it are served" in log


async def test_a_first_page_past_the_line_cap_leaves_the_backend_in_service_without_tools(tmp_path: Path) -> None:
    with running_gateway(write_config(tmp_path, pages_config(tmp_path, "first"))) as gateway:
        assert_in_service(gateway, 0)
        async with Client(gateway.url) as client:
            with anyio.fail_after(60):
                demo = await client.call_tool("demo_search_notes", {"query": "x"})
            assert not demo.is_error, text(demo)
        assert_in_service(gateway, 0)
    assert "only the 0 items before it are served" in gateway.output()
