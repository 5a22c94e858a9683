"""A backend's listing through the gateway: cursors that loop or never end, URIs two backends both list,
names lost under `priority`; seen by a real client of a real gateway in front of real backend processes.

Run as a script, this file is that backend: a 2025-11-25 stdio server whose `resources/list` pages as
`PAGER_MODE` says (`repeat`: every page names the same next cursor; `endless`: a new cursor every page;
`two`: two pages, then the end) and whose `stats` tool reports its name and how many `resources/list` requests
it got (`PAGER_TOOLS` more tools are listed beside it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

if __name__ != "__main__":
    from mcp import Client

    from tests.support import running_gateway, write_config

pytestmark = pytest.mark.anyio
PER_PAGE = 40


def _page(cursor: str | None) -> dict[str, Any]:
    mode = os.environ.get("PAGER_MODE", "two")
    number = int(cursor) if cursor else 0
    if mode == "repeat":
        resources, following = [_resource(f"page://0/{i}") for i in range(PER_PAGE)], "1"
    else:
        resources = [_resource(f"page://{number}/{i}") for i in range(PER_PAGE)]
        following = str(number + 1) if mode == "endless" or number == 0 else None
    page: dict[str, Any] = {"resources": resources}
    if following is not None:
        page["nextCursor"] = following
    return page


def _resource(uri: str) -> dict[str, Any]:
    return {"uri": uri, "name": uri.rsplit("/", 1)[-1]}


def _serve() -> None:
    listed = 0
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request:
            continue
        method, params = request["method"], request.get("params") or {}
        result: dict[str, Any]
        if method == "initialize":
            capabilities = {"tools": {}, "resources": {}}
            info = {"name": "pager", "version": "1"}
            result = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": info}
        elif method == "tools/list":
            names = ["stats", *(f"tool_{i}" for i in range(int(os.environ.get("PAGER_TOOLS", "0"))))]
            result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names]}
        elif method == "tools/call":
            stats = {"listed": listed, "name": os.environ["PAGER_NAME"]}
            result = {"content": [{"type": "text", "text": json.dumps(stats)}]}
        elif method == "resources/list":
            listed += 1
            result = _page(params.get("cursor"))
        elif method == "resources/read":
            result = {"contents": [{"uri": params["uri"], "text": os.environ["PAGER_NAME"]}]}
        elif method == "resources/templates/list":
            result = {"resourceTemplates": []}
        else:
            result = {}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\n")
        sys.stdout.flush()


def _pager(name: str, mode: str, tools: int = 0) -> dict[str, Any]:
    env = {"PAGER_MODE": mode, "PAGER_NAME": name, "PAGER_TOOLS": str(tools)}
    return {"name": name, "command": sys.executable, "args": [__file__], "env": env}


def _wait_for(gateway: Any, text: str) -> str:
    deadline = time.monotonic() + 20
    while text not in (output := gateway.output()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{output[-3000:]}"
        time.sleep(0.1)
    return output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_cursor_the_backend_gives_again_ends_its_listing(tmp_path: Path) -> None:
    """Before, the gateway followed the same cursor 1,000 times and held 1,000 copies of the page."""
    config = write_config(tmp_path, {"backends": [_pager("loop", "repeat")]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert sorted(uris) == sorted(f"page://0/{i}" for i in range(PER_PAGE))
            asked = (await client.call_tool("loop_stats", {})).content[0].text  # type: ignore[union-attr]
        assert json.loads(asked)["listed"] <= 3, f"the backend was asked for {asked} pages"
        output = _wait_for(gateway, "gave a cursor it already gave")
        assert "resources/list" in output


async def test_a_listing_cut_at_the_page_cap_is_said_in_the_log(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [_pager("endless", "endless")]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            count = len((await client.list_resources()).resources)
        assert count == 1000 * PER_PAGE
        _wait_for(gateway, "backend endless: resources/list still had more after 1000 pages")


async def test_uris_another_backend_serves_are_logged_in_a_bounded_number_of_lines(tmp_path: Path) -> None:
    """Two copies of one server: each URI is served by the first; before, every one of the second's URIs
    was a log line of its own, at every catalogue rebuild."""
    config = write_config(tmp_path, {"backends": [_pager("first", "two"), _pager("second", "two")]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert len((await client.list_resources()).resources) == 2 * PER_PAGE
            read = await client.read_resource("page://1/3")
            assert read.contents[0].text == "first"  # type: ignore[union-attr]
        output = _wait_for(gateway, f"backend second: {2 * PER_PAGE - 5} more resources dropped, already held")
        assert "resource page://0/0: served by first, second's copy dropped" in output
        assert output.count("copy dropped") == 5


async def test_names_lost_under_priority_are_logged_in_a_bounded_number_of_lines(tmp_path: Path) -> None:
    backends = [_pager("low", "two", tools=200), _pager("high", "two", tools=200)]
    aggregation = {"conflict_resolution": "priority", "priority": ["high"]}
    config = write_config(tmp_path, {"backends": backends, "aggregation": aggregation})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert len((await client.list_tools()).tools) == 201
            asked = (await client.call_tool("stats", {})).content[0].text  # type: ignore[union-attr]
            assert json.loads(asked)["name"] == "high"
        output = _wait_for(gateway, "backend low: 196 more tools dropped, already held (by high)")
        assert "tool 'stats': backend high wins over low (priority); low's is dropped" in output
        assert output.count("wins over") == 5


if __name__ == "__main__":
    _serve()
