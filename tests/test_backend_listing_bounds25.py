"""What one backend's listing can make the gateway hold and wait for: a list cut at
`limits.max_listed_items_per_backend` however many cursors the backend hands out, at connect or after
`list_changed`; a re-fetch the backend never answers given up at the connect timeout; its self-reported server
name cut and escaped in /readyz. A real gateway in front of a real hostile stdio backend (tests/paging_backend25.py)
and the demo backend, seen by a real MCP client.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from tests.paging_backend25 import HOSTILE_NAME
from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.backends.listing import ListBudget

pytestmark = pytest.mark.anyio
PAGING = Path(__file__).with_name("paging_backend25.py")
BOUND = 1000
PER_PAGE = 300  # the bound falls inside the fourth page


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def paging(mode: str, **extra: Any) -> dict[str, Any]:
    env = {"PAGING_MODE": mode, "PAGING_PER": str(PER_PAGE), **extra.pop("env", {})}
    return {"name": "paging", "command": sys.executable, "args": [str(PAGING)], "env": env, **extra}


def bounded_config(tmp_path: Path, backend: dict[str, Any], **limits: Any) -> Path:
    limits = {"max_listed_items_per_backend": BOUND, **limits}
    return write_config(tmp_path, {"backends": [demo_backend("demo"), backend], "limits": limits})


def text(result: Any) -> str:
    return str(result.content[0].text)


async def paging_uris(client: Client) -> list[str]:
    return [str(r.uri) for r in (await client.list_resources()).resources if str(r.uri).startswith("page://")]


async def pages_asked(client: Client) -> int:
    return int(json.loads(text(await client.call_tool("paging_stats", {})))["resources/list"])


async def wait_for_uris(client: Client, gateway: Gateway, done: Any) -> list[str]:
    deadline = time.monotonic() + 60
    while not done(uris := await paging_uris(client)):
        assert time.monotonic() < deadline, f"{len(uris)} resources listed\n{gateway.output()[-3000:]}"
        await anyio.sleep(0.1)
    return uris


def paging_summary(gateway: Gateway) -> dict[str, Any]:
    body = httpx2.get(gateway.base + "/readyz", timeout=30).json()
    return next(b for b in body["backends"] if b["name"] == "paging")


async def assert_demo_serves(client: Client) -> None:
    result = await client.call_tool("demo_search_notes", {"query": "anything"})
    assert not result.is_error, text(result)


CUT = "backend paging: resources/list offers more than limits.max_listed_items_per_backend (1,000 items)"


async def test_an_endless_cursor_at_connect_stops_at_the_item_bound(tmp_path: Path) -> None:
    """Before, the gateway followed 1,000 pages: 20,000 resources a page took it past 1.4 GB within the connect
    timeout, the backend failed, and every reconnect did it again."""
    with running_gateway(bounded_config(tmp_path, paging("endless"))) as gateway:
        async with Client(gateway.url) as client:
            assert len(await paging_uris(client)) == BOUND
            assert await pages_asked(client) == 4  # 300 + 300 + 300 + 100 of the fourth: no fifth asked for
            await assert_demo_serves(client)
        assert paging_summary(gateway)["resources"] == BOUND
        assert gateway.output().count(CUT) == 1, gateway.output()[-3000:]


async def test_a_list_that_grows_after_list_changed_stops_at_the_item_bound(tmp_path: Path) -> None:
    with running_gateway(bounded_config(tmp_path, paging("one"))) as gateway:
        async with Client(gateway.url) as client:
            assert await paging_uris(client) == ["page://one"]
            assert text(await client.call_tool("paging_grow", {})) == "endless"
            uris = await wait_for_uris(client, gateway, lambda uris: uris != ["page://one"])
            assert len(uris) == BOUND and len(set(uris)) == BOUND
            assert await pages_asked(client) == 1 + 4
            await assert_demo_serves(client)
        assert paging_summary(gateway)["resources"] == BOUND
        assert CUT in gateway.output()


async def test_a_refetch_the_backend_never_answers_gives_up_at_the_connect_timeout(tmp_path: Path) -> None:
    """Before, the re-fetch waited for ever, and with it every later one: the backend's next change was never
    taken in."""
    backend = paging("one", connect_timeout=3)
    config = bounded_config(tmp_path, backend, list_changed_interval=0, list_changed_pace=0)
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            asked = await pages_asked(client)
            assert text(await client.call_tool("paging_hang", {})) == "hang"
            deadline = time.monotonic() + 30
            while await pages_asked(client) == asked:  # the re-fetch waits on its unanswered page now
                assert time.monotonic() < deadline, gateway.output()[-3000:]
                await anyio.sleep(0.05)
            assert text(await client.call_tool("paging_heal", {})) == "two"
            uris = await wait_for_uris(client, gateway, lambda uris: uris != ["page://one"])
            assert sorted(uris) == ["page://two/0", "page://two/1"]
            await assert_demo_serves(client)
        assert "backend paging: re-fetch after a change did not finish within 3s" in gateway.output()


async def test_readyz_shows_a_long_hostile_server_name_cut_and_escaped(tmp_path: Path) -> None:
    """Before, /readyz carried the backend's 1.6 million characters, terminal escapes and all (3.3 MB)."""
    backend = paging("one", env={"PAGING_LONG_NAME": "1"})
    with running_gateway(bounded_config(tmp_path, backend)) as gateway:
        response = httpx2.get(gateway.base + "/readyz", timeout=30)
        assert len(response.content) < 10_000
        server = next(b for b in response.json()["backends"] if b["name"] == "paging")["server"]
        assert (
            server.startswith("\\x1b]0;pwned\\x07\\x1b[2J\\u202eX") and f"({len(HOSTILE_NAME):,} characters)" in server
        )
        assert not any(c in server for c in "\x1b\x07\u202e")


async def test_a_list_is_cut_where_its_json_passes_the_character_bound(caplog: pytest.LogCaptureFixture) -> None:
    budget = ListBudget("wide", "tools/list", most=BOUND, chars=10_000)
    page = [{"name": f"t{n}", "description": "d" * 1000} for n in range(50)]
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.backends.listing"):
        kept = await budget.take(page, more=True)
    assert 5 <= len(kept) < 10 and kept == page[: len(kept)] and budget.spent
    assert "backend wide: tools/list offers more than 10,000 characters of JSON, the most one list holds" in caplog.text
