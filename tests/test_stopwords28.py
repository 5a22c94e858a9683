"""The keyword arm drops question words: "what time is it" is a time question, not a memory write.

A real `vmcp serve` in front of the demo's memory and time servers and its two workflows (examples/demo.yaml),
driven by the SDK's client. With Lucene's 33 stopwords "what" was a term, found only in `remember_with_time`'s
document ("read back what is known"), so its idf put that workflow, a memory write, first for "what time is it",
above `time_get_current_time`. NLTK's list (bm25s' `STOPWORDS_EN_PLUS`) drops it on both sides, query and
documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, running_gateway, write_config
from tests.test_nothing_fits28 import DEMO, backends, find, wait_for_every_vector

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not (NODE_BIN / "mcp-server-memory").exists():
        pytest.skip("the memory server is not installed (npm install)")
    directory = tmp_path_factory.mktemp("stopwords")
    config = {
        "backends": backends(directory),
        "workflows": DEMO["workflows"],
        "aggregation": DEMO["aggregation"],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes")},
    }
    with running_gateway(write_config(directory, config)) as gateway:
        wait_for_every_vector(gateway)
        yield gateway


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[Client]:
    async with Client(gateway.url, mode="legacy") as session:
        yield session


@pytest.mark.parametrize("query", ["what time is it", "what's the time in New York"])
async def test_a_time_question_gets_the_current_time_tool_first(client: Client, query: str) -> None:
    answer = await find(client, query)
    names = [tool["name"] for tool in answer["tools"]]
    assert names[0] == "time_get_current_time", names


async def test_a_day_question_gets_a_clock_not_a_memory_write(client: Client) -> None:
    answer = await find(client, "what day is it today")
    names = [tool["name"] for tool in answer["tools"]]
    # "day" is in world_clock's document ("one time of day"): either clock answers the question.
    assert names[0] in {"time_get_current_time", "world_clock"}, names
