"""An abbreviation's full stop does not split a find_tool request into intents.

The splitter (optimizer/ranking.py, `split_intents`) took every full stop before a space for a sentence end:
"Book an appointment with Dr. Smith for tomorrow" became "Book an appointment with Dr" and "Smith for
tomorrow", and the second fragment's best tool, ranked as a need of its own, tied the request's own best.
A real `vmcp serve` over a stdio backend, asked by the SDK client, ranking by keywords alone (`dense_weight: 0`)
so the answer does not depend on when the embedding model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, running_gateway, tools_backend, write_config
from vmcp_opt.optimizer.ranking import split_intents

TOOLS = [
    {
        "name": "book_appointment",
        "description": "Book an appointment with a doctor at the clinic.",
        "inputSchema": {"type": "object", "properties": {"doctor": {"type": "string"}}},
    },
    {
        # What "Smith for tomorrow", cut off as an intent, matches best.
        "name": "family_planner",
        "description": "Tomorrow's plans for the Smith family.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "send_email",
        "description": "Send an email message to a contact.",
        "inputSchema": {"type": "object", "properties": {"to": {"type": "string"}}},
    },
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("split-abbreviations33")
    backend = tools_backend("clinic", directory / "clinic.py", f"TOOLS = json.loads({json.dumps(TOOLS)!r})\n")
    config = {
        "backends": [backend],
        "optimizer": {
            "enabled": True,
            "index_dir": str(directory / "indexes"),
            "vector_wait": 0,
            "dense_weight": 0.0,
            "usage": False,
        },
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def _scores(gateway: Gateway, query: str) -> dict[str, float]:
    async with Client(streamable_http_client(gateway.url)) as client:
        result = await client.call_tool("find_tool", {"query": query, "limit": 3})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return {tool["name"]: tool["score"] for tool in result.structured_content["tools"]}


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_doctors_title_leaves_the_request_whole_and_its_tool_first(gateway: Gateway) -> None:
    scores = await _scores(gateway, "Book an appointment with Dr. Smith for tomorrow")
    assert max(scores, key=scores.__getitem__) == "clinic_book_appointment"
    # Cut at "Dr.", the fragment "Smith for tomorrow" put its own best tool level with the request's.
    assert scores.get("clinic_family_planner", 0.0) < scores["clinic_book_appointment"], scores


@pytest.mark.parametrize(
    "query",
    [
        "Book an appointment with Dr. Smith for tomorrow",
        "Ask Mr. Jones and Mrs. Lee to confirm the meeting",
        "Plan a trip to St. Louis for the weekend",
        "Compare prices for fruit, e.g. apples and pears",
        "Show the scores of Brazil vs. Germany last year",
        "Delete my alarm at 7:00 a.m. on March 16th",
        "Get the income statement for Apple Inc. (AAPL) this year",
        "Print page No. 42 of the report",
    ],
)
def test_an_abbreviation_holds_its_sentence_together(query: str) -> None:
    assert split_intents(query) == [query]


@pytest.mark.parametrize(
    ("query", "intents"),
    [
        # "Inc.", "a.m." and "etc." often end a sentence: before a capital they still split.
        (
            "Get the cash flow statement for Apple Inc. Finally, fetch the top news",
            ["Get the cash flow statement for Apple Inc", "Finally, fetch the top news"],
        ),
        ("Wake me at 7 a.m. Then read me the news", ["Wake me at 7 a.m", "Then read me the news"]),
        ("I said no. Book the flight now", ["I said no", "Book the flight now"]),
        # Held dots come back, in the intent they belong to.
        ("Call Dr. Smith at noon. Then text Mrs. Lee", ["Call Dr. Smith at noon", "Then text Mrs. Lee"]),
        ("Find towns near Mt. Hood; email the list", ["Find towns near Mt. Hood", "email the list"]),
    ],
)
def test_a_sentence_end_after_an_abbreviation_still_splits(query: str, intents: list[str]) -> None:
    assert split_intents(query) == intents
