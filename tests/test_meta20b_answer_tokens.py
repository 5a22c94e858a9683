"""find_tool's `tokens.this_answer` counts the whole answer as a client receives it, through a real gateway and
an SDK client of either protocol revision: the echoed query, the note and the figures too, not only the
results; counted once (the text and the structured content are one answer), so `saved` and the Prometheus
savings that sum it are not overstated."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.meta_tool_forms import MAX_QUERY_CHARS
from vmcp_opt.optimizer.tokens import count_tokens

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

LONG_QUERY = ("save a note about the quarterly budget review with the finance team " * 100)[:MAX_QUERY_CHARS]
QUERIES = {
    "long": LONG_QUERY,
    "short": "save a note",
    # Escaped in the text (`\"`, `\n`, `\t`), non-ASCII as written: counted as the text carries them.
    "escaped": 'a "quoted" note\nwith a tab\tand 東京 in it \\ done',
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("meta20b-tokens")
    config = {
        "backends": [demo_backend("notes")],
        # No wait for the model: a keyword answer carries a note, which is counted too.
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def find_tool(gateway: Gateway, mode: Any, query: str) -> tuple[str, dict[str, Any]]:
    async with Client(gateway.url, mode=mode) as client:
        result = await client.call_tool("find_tool", {"query": query})
    assert not result.is_error, result.content
    text: str = result.content[0].text  # type: ignore[union-attr]
    # One answer in two forms: a client's model reads one of them, so it is counted once.
    answer: dict[str, Any] = json.loads(text)
    assert result.structured_content == answer
    return text, answer


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
@pytest.mark.parametrize("which", list(QUERIES))
async def test_this_answer_counts_the_whole_answer_text_once(gateway: Gateway, mode: str, which: str) -> None:
    query = QUERIES[which]
    text, answer = await find_tool(gateway, mode, query)
    tokens = answer["tokens"]
    assert answer["tools"], answer
    held = count_tokens(text)
    # Exactly the text's tokens, or a token or two over when no number is its own text's count (379 is two
    # tokens, 380 one): never under, and never the text twice.
    assert held <= tokens["this_answer"] <= held + 2, (tokens, held)
    # The defect: only the results were counted (a 4,000-character query reported ~114 tokens).
    results_only = count_tokens(json.dumps(answer["tools"], ensure_ascii=False))
    assert tokens["this_answer"] >= results_only + count_tokens(query)
    assert tokens["saved"] == max(0, tokens["full_tool_list"] - tokens["this_answer"])


async def test_the_saved_tokens_metric_sums_the_answers_own_savings(gateway: Gateway) -> None:
    """`vmcp_find_tool_tokens_saved_total` adds up what the answers say they saved, now whole-answer figures."""
    before = saved_total(gateway)
    answers = [(await find_tool(gateway, "legacy", query))[1] for query in QUERIES.values()]
    expected = before + sum(answer["tokens"]["saved"] for answer in answers)
    # Recorded as each answer leaves: polled until all three are in, then exactly their sum.
    with anyio.fail_after(30):
        while saved_total(gateway) < expected:  # noqa: ASYNC110 - polling the server
            await anyio.sleep(0.05)
    assert saved_total(gateway) == expected


def saved_total(gateway: Gateway) -> float:
    text = httpx2.get(f"{gateway.base}/metrics", timeout=30).text
    found = re.search(r"^vmcp_find_tool_tokens_saved_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
