"""Sessions and held streams are bounded per verified caller, not only per address (review 29, fG).

A real gateway behind two API keys per test, with low caps: one caller at its cap is refused with a 429 (or a
JSON-RPC error) naming the limit, while another verified caller on the same address is still served.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import (
    DEMO_SERVER,
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    api_keys_file,
    bearer_client,
    running_gateway,
    write_config,
)

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

SESSIONS_PER_CALLER = 2
STREAMS_PER_CALLER = 2


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("caller_caps")
    keys = api_keys_file(directory / "keys.json", {name: ["g"] for name in ("alice", "bob", "carol", "dave")})
    config = {
        "backends": [{"name": "demo", "command": sys.executable, "args": [str(DEMO_SERVER)]}],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "limits": {
            "max_sessions": 20,
            "max_sessions_per_address": 2,
            "max_sessions_per_caller": SESSIONS_PER_CALLER,
            "max_streams_per_caller": STREAMS_PER_CALLER,
        },
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running, keys


def from_address(address: str) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=30)


def open_session(client: httpx2.Client, url: str, key: str) -> httpx2.Response:
    return client.post(url, json=RAW_INITIALIZE, headers={**RAW_HEADERS, "Authorization": f"Bearer {key}"})


def session_headers(opened: httpx2.Response, key: str) -> dict[str, str]:
    return {
        **RAW_HEADERS,
        "Authorization": f"Bearer {key}",
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }


def assert_refused(answer: httpx2.Response, limit: str) -> None:
    assert answer.status_code == 429, f"{answer.status_code} {answer.headers}"
    assert int(answer.headers["retry-after"]) >= 1
    error: dict[str, Any] = answer.json()["error"]
    assert error["data"]["limit"] == limit
    assert limit in error["message"]


def test_a_caller_at_its_session_cap_is_refused_and_another_caller_on_its_address_is_served(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    with from_address("127.0.0.1") as here, from_address("127.0.0.2") as elsewhere:
        for _ in range(SESSIONS_PER_CALLER):
            assert open_session(here, running.url, keys["alice"]).status_code == 200
        assert_refused(open_session(here, running.url, keys["alice"]), "limits.max_sessions_per_caller")
        # Another address buys alice nothing: her cap is hers, wherever she connects from.
        assert_refused(open_session(elsewhere, running.url, keys["alice"]), "limits.max_sessions_per_caller")
        # Bob shares alice's address, which holds as many sessions as max_sessions_per_address: still served.
        opened = open_session(here, running.url, keys["bob"])
        assert opened.status_code == 200, opened.text
        listed = here.post(
            running.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=session_headers(opened, keys["bob"]),
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["result"]["tools"]


@asynccontextmanager
async def event_stream(client: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> AsyncIterator[httpx2.Response]:
    """A session's GET event stream, held open until the block ends (or its refusal, read)."""
    request = client.build_request("GET", url, headers={**headers, "Accept": "text/event-stream"})
    answer = await client.send(request, stream=True)
    try:
        if answer.status_code != 200:
            await answer.aread()
        yield answer
    finally:
        await answer.aclose()


@pytest.mark.anyio
async def test_get_and_listen_streams_count_against_the_callers_stream_cap_not_another_callers(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    with from_address("127.0.0.1") as here:
        carol = [session_headers(open_session(here, running.url, keys["carol"]), keys["carol"]) for _ in range(2)]
        dave = session_headers(open_session(here, running.url, keys["dave"]), keys["dave"])
    timeout = httpx2.Timeout(30, read=None)
    async with AsyncExitStack() as held, httpx2.AsyncClient(timeout=timeout) as client:
        first = await held.enter_async_context(event_stream(client, running.url, carol[0]))
        assert first.status_code == 200
        carol_listens = await held.enter_async_context(bearer_client(running.url, keys["carol"], "2026-07-28"))
        await held.enter_async_context(carol_listens.listen(tools_list_changed=True))
        # Carol now holds her two streams (a GET stream and a listen stream): a third of either kind is refused.
        async with event_stream(client, running.url, carol[1]) as refused:
            assert_refused(refused, "limits.max_streams_per_caller")
        with pytest.raises(MCPError) as listen_refused:
            async with carol_listens.listen(prompts_list_changed=True):
                pass
        assert listen_refused.value.error.data["limit"] == "limits.max_streams_per_caller"
        assert "limits.max_streams_per_caller" in listen_refused.value.error.message
        # Dave, on the same address, still gets both kinds.
        assert (await held.enter_async_context(event_stream(client, running.url, dave))).status_code == 200
        dave_listens = await held.enter_async_context(bearer_client(running.url, keys["dave"], "2026-07-28"))
        async with dave_listens.listen(tools_list_changed=True) as listening:
            assert listening.honored.tools_list_changed
