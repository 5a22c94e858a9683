"""find_tool over the demo's catalogue: `nothing_fits` and the keyword arm's question words.

A real `vmcp serve` in front of the demo's memory and time servers and its two workflows (examples/demo.yaml),
driven by the SDK's client. "remember that my cat is called Tom" scores under the match threshold against every
tool (a short request against long documents), yet both arms put `remember_with_time` first, the keyword arm
well ahead of its runner-up: it fits (optimizer/fit_signal.py). A request outside the catalogue, or one sharing a
lone word with one tool, is still told nothing fits.

The keyword arm drops question words: "what time is it" is a time question, not a memory write. With Lucene's 33
stopwords alone "what" was a term, found only in `remember_with_time`'s document ("read back what is known"), so
its idf put that workflow, a memory write, first, above `time_get_current_time` (optimizer/keyword_arm.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client

from tests.support import EXAMPLES, NODE_BIN, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

DEMO = yaml.safe_load((EXAMPLES / "demo.yaml").read_text(encoding="utf-8"))
DESCRIPTIONS = {backend["name"]: backend["description"] for backend in DEMO["backends"]}
# The memory server's 9 tools, the time server's 2 and the demo's 2 workflows.
TOOLS = 13


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def backends(directory: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "memory",
            "description": DESCRIPTIONS["memory"],
            "command": str(NODE_BIN / "mcp-server-memory"),
            "env": {"MEMORY_FILE_PATH": str(directory / "memory.jsonl")},
        },
        {
            "name": "time",
            "description": DESCRIPTIONS["time"],
            "command": sys.executable,
            "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        },
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not (NODE_BIN / "mcp-server-memory").exists():
        pytest.skip("the memory server is not installed (npm install)")
    directory = tmp_path_factory.mktemp("demo-find-tool")
    config = {
        "backends": backends(directory),
        "workflows": DEMO["workflows"],
        "aggregation": DEMO["aggregation"],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes")},
    }
    with running_gateway(write_config(directory, config)) as gateway:
        wait_for_every_vector(gateway)
        yield gateway


def wait_for_every_vector(gateway: Gateway, timeout: float = 120.0) -> None:
    """Until every tool of both backends and both workflows is indexed with its vector."""
    deadline = time.monotonic() + timeout
    while True:
        optimizer = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()["optimizer"]
        if optimizer["tools"] == TOOLS and optimizer["with_vectors"] == TOOLS:
            return
        assert time.monotonic() < deadline, optimizer
        time.sleep(0.1)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[Client]:
    async with Client(gateway.url, mode="legacy") as session:
        yield session


async def find(client: Client, query: str) -> dict[str, Any]:
    result = await client.call_tool("find_tool", {"query": query})
    assert not result.is_error, result.content
    answer: dict[str, Any] | None = result.structured_content
    assert answer is not None and answer["ranking"] == "hybrid", answer
    return answer


async def test_a_short_chatty_request_gets_its_memory_tool_without_nothing_fits(client: Client) -> None:
    answer = await find(client, "remember that my cat is called Tom")
    assert answer["tools"][0]["name"] == "remember_with_time"
    # Every match score is under the threshold: the arms' agreement, not the scores, says it fits.
    assert all(tool.get("weak_match") for tool in answer["tools"])
    assert "nothing_fits" not in answer
    assert "nothing fits" not in answer.get("note", "")


async def test_a_request_outside_the_catalogue_is_still_told_nothing_fits(client: Client) -> None:
    answer = await find(client, "book me a flight to Lisbon")
    assert answer["nothing_fits"] is True
    assert "nothing fits this request well" in answer["note"]


async def test_a_lone_shared_word_is_no_keyword_lead(client: Client) -> None:
    """Only `memory_open_nodes` has "open": both arms put it first, but a keyword match with no runner-up is
    no lead, so the match scores' "nothing fits" stands."""
    answer = await find(client, "open the garage door")
    assert answer["tools"][0]["name"] == "memory_open_nodes"
    assert answer["nothing_fits"] is True


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
