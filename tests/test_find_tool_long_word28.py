"""find_tool's token figures for a query that is one long word, in the real `vmcp serve` over the real demo backend
and a real MCP client.

WordPiece encodes a word longer than its `max_input_chars_per_word` (100) as one `[UNK]`: a 4,096-character
one-word query, echoed in the answer, counted as one token, so `this_answer` was ~700 and `saved` (and
`vmcp_find_tool_tokens_saved_total`) grew by what the answer really cost a client's LLM. Such a word is now
counted as its pieces (optimizer/tokens.py `LONG_WORD_PIECE`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.meta_tool_forms import MAX_QUERY_CHARS
from vmcp_opt.optimizer.tokens import count_tokens_each, tools_list_tokens

pytestmark = [pytest.mark.anyio]

# No token of the default model's vocabulary for a run of one letter holds more than a few characters ("a" * 4,096
# is 2,048 tokens to the tokenizer's own search): a quarter of the characters is far under the count, and far over
# the one `[UNK]` it was.
CHARACTERS_PER_TOKEN_MOST = 4


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("find-tool-long-word")
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes")},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def saved_total(gateway: Gateway) -> float:
    metrics = httpx2.get(f"{gateway.base}/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines() if line.startswith("vmcp_find_tool_tokens_saved_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.mark.slow
async def test_a_query_of_one_long_word_is_counted_as_the_tokens_it_is(gateway: Gateway) -> None:
    query = "a" * MAX_QUERY_CHARS
    before = saved_total(gateway)
    async with Client(gateway.url) as client:
        result = await client.call_tool("find_tool", {"query": query})
    assert not result.is_error, result.content
    answer: dict[str, Any] = result.structured_content or {}
    tokens = answer["tokens"]
    # The answer echoes the query: its tokens are at least the word's.
    assert tokens["this_answer"] >= len(query) // CHARACTERS_PER_TOKEN_MOST, tokens
    assert tokens["saved"] == max(0, tokens["full_tool_list"] - tokens["this_answer"]), tokens
    assert saved_total(gateway) - before == tokens["saved"]


def test_a_tool_list_s_long_words_count_as_their_tokens_too() -> None:
    """`tools/list`'s cost (find_tool's `full_tool_list`) is counted in batches, another path than the answer's."""
    word = "b" * MAX_QUERY_CHARS
    least = len(word) // CHARACTERS_PER_TOKEN_MOST
    assert all(count >= least for count in count_tokens_each([word, f"see {word}."])), count_tokens_each([word])
    tool = types.Tool(name="blob", description=word, input_schema={"type": "object"})
    assert tools_list_tokens([tool]) >= least
