"""Who called: two clients are two callers on every transport, and one client stays one caller.

A real `vmcp serve` process, the demo backend, and the SDK's client; the gateway's per-call log line
(`tool call <tool> by <caller id>: ...`) shows the caller each call was admitted as.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "Bearer s3cr3t-token-of-alice-7f3a"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(directory: Path) -> Path:
    return write_config(directory, {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path_factory.mktemp("callers"))) as running:
        yield running


async def search(client: Client, marker: str) -> None:
    result = await client.call_tool("notes_search_notes", {"query": marker})
    assert not result.is_error


def ids_in(log: str) -> list[str]:
    return re.findall(r"tool call notes_search_notes by (\S+): ok", " ".join(log.split()))


def with_header(url: str, header: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers={"Authorization": header})))


async def test_two_http_sessions_are_two_callers_and_one_session_is_one(gateway: Gateway) -> None:
    before = len(ids_in(gateway.output()))
    async with Client(gateway.url, mode="legacy") as one, Client(gateway.url, mode="legacy") as two:
        await search(one, "a")
        await search(two, "b")
        await search(one, "c")
    first, second, third = ids_in(gateway.output())[before:]
    assert first.startswith("session:") and second.startswith("session:")
    assert first == third and first != second


async def test_modern_http_callers_are_told_apart_by_their_credential_which_is_never_logged(gateway: Gateway) -> None:
    before = len(ids_in(gateway.output()))
    async with with_header(gateway.url, SECRET) as alice, with_header(gateway.url, "Bearer bob") as bob:
        await search(alice, "a")
        await search(bob, "b")
        await search(alice, "c")
    async with Client(gateway.url) as nobody:
        await search(nobody, "d")
        await search(nobody, "e")
    alice_1, bob_1, alice_2, anon_1, anon_2 = ids_in(gateway.output())[before:]
    assert alice_1.startswith("credential:") and bob_1.startswith("credential:")
    assert alice_1 == alice_2 and alice_1 != bob_1
    # Without a credential nothing ties two stateless requests together: each is its own anonymous caller.
    assert anon_1.startswith("anonymous:") and anon_2.startswith("anonymous:") and anon_1 != anon_2
    assert "s3cr3t" not in gateway.output()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_each_stdio_client_is_one_caller_of_its_own(tmp_path: Path, mode: str) -> None:
    path = config(tmp_path)
    seen: list[list[str]] = []
    for run in range(2):
        log = tmp_path / f"stderr-{run}.log"
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(path)]
        )
        with log.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:  # type: ignore[arg-type]
                await search(client, "a")
                await search(client, "b")
        seen.append(ids_in(log.read_text(encoding="utf-8")))
    (first_a, first_b), (second_a, second_b) = seen
    assert first_a.startswith("session:") and first_a == first_b
    assert second_a == second_b and second_a != first_a
