"""A find_tool query shaped to make the intent splitter backtrack is answered at once, and splits as before.

The splitter's pattern (optimizer/ranking.py, `split_intents`) began with `\\s*` and had alternatives that
began with `\\s+`: on a run of thousands of spaces followed by no boundary it tried every split of the run at
every position in it, in C code that holds the GIL. One query of a word, 4,000 spaces and two words (under
find_tool's 4,096-character cap) held a worker thread and the whole gateway, health checks included, for
minutes. A real `vmcp serve` over the demo notes server, asked by the SDK client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.ranking import split_intents

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Seconds the hostile queries may take, all of them: far above what they take now (milliseconds), far below
# what one took before (4,000 spaces: about five minutes of CPU; 1,000 already held the gateway 4.5 s).
DEADLINE = 60.0
HOSTILE = [
    "save" + " " * 4000 + "a note",
    "save" + " \t" * 2000 + "a note",
    "save" + "!" * 4000 + " a note",
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("learn20-hostile")
    config = {
        "backends": [demo_backend("notes")],
        # No waiting for the model: the splitter runs whatever ranks (keywords alone meanwhile).
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes"), "vector_wait": 0},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def test_a_query_of_long_whitespace_runs_is_answered_and_the_gateway_stays_responsive(gateway: Gateway) -> None:
    async with Client(streamable_http_client(gateway.url)) as client, httpx2.AsyncClient() as http:
        with anyio.fail_after(DEADLINE):
            for query in HOSTILE:
                result = await client.call_tool("find_tool", {"query": query, "limit": 3})
                assert not result.is_error, result.content
                assert result.structured_content is not None
                assert result.structured_content["tools"][0]["name"] == "notes_save_note"
            # And the gateway answers others right after: nothing of those queries is still running.
            assert (await http.get(f"{gateway.base}/healthz", timeout=10)).status_code == 200


@pytest.mark.parametrize(
    ("query", "intents"),
    [
        ("save a note\n\n   then find the time", ["save a note", "then find the time"]),
        ("save a note   \n  and then find the time", ["save a note", "find the time"]),
        ("save a note \t and then \t find the time", ["save a note", "find the time"]),
        ("save a note" + " " * 500 + "and also find the time", ["save a note", "find the time"]),
        ("save a note!!!   find the time", ["save a note", "find the time"]),
        ("save a note" + " " * 500 + "find the time", ["save a note" + " " * 500 + "find the time"]),
        ("version 1.2.3 release notes", ["version 1.2.3 release notes"]),
    ],
)
def test_whitespace_runs_split_a_request_where_they_did(query: str, intents: list[str]) -> None:
    assert split_intents(query) == intents
