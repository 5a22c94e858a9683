"""find_tool's input through the real gateway, and `vmcp index search`'s by the real command: a query that is
empty, blank or longer than `MAX_QUERY_CHARS`, an empty `backends` list and a backend that cannot be searched
are each refused with a message naming the field, never answered with an empty search or an echo of the input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.meta_tool_forms import MAX_QUERY_CHARS
from vmcp_opt.optimizer.tokens import count_tokens

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("find-tool-input")
    backends = [demo_backend("notes"), {"name": "nocmd", "command": str(directory / "no-such-program")}]
    # No wait for the model: these answers do not depend on the ranking.
    optimizer = {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0}
    return write_config(directory, {"backends": backends, "optimizer": optimizer})


@pytest.fixture(scope="module")
def gateway(config: Path) -> Iterator[Gateway]:
    with running_gateway(config) as running:
        yield running


async def find_error(gateway: Gateway, arguments: dict[str, Any]) -> str:
    """find_tool's error text for `arguments` (the call must be refused)."""
    async with Client(gateway.url) as client:
        result = await client.call_tool("find_tool", arguments)
    text: str = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error, text[:300]
    return text


async def test_a_query_over_the_maximum_is_refused_without_echoing_it(gateway: Gateway) -> None:
    text = await find_error(gateway, {"query": "x" * 100_000})
    assert text == (
        "invalid arguments for tool 'find_tool': field 'query': 100,000 characters, over the maximum of "
        f"{MAX_QUERY_CHARS:,}; say what you need in fewer words"
    )


async def test_a_query_at_the_maximum_is_searched_and_counted(gateway: Gateway) -> None:
    query = ("save a note " * MAX_QUERY_CHARS)[:MAX_QUERY_CHARS]
    async with Client(gateway.url) as client:
        find_tool = next(tool for tool in (await client.list_tools()).tools if tool.name == "find_tool")
        result = await client.call_tool("find_tool", {"query": query})
    # Clients see the bound in the schema.
    assert find_tool.input_schema["properties"]["query"]["maxLength"] == MAX_QUERY_CHARS
    assert not result.is_error, result.content
    answer = result.structured_content
    assert answer is not None and answer["query"] == query and answer["tools"]
    # The whole answer's text, the echoed query's ~1,000 tokens with it, not only its results: exactly, or a
    # token or two over when no number is its text's count (tokens.py `AnswerTokens._settled`).
    held = count_tokens(result.content[0].text)  # type: ignore[union-attr]
    assert held <= answer["tokens"]["this_answer"] <= held + 2, (answer["tokens"], held)
    assert answer["tokens"]["this_answer"] > count_tokens(query)


@pytest.mark.parametrize("query", ["", "   ", "\t\n ", "\u200b\u200d\ufeff", " \x00\u2060 "])
async def test_an_empty_or_blank_query_is_refused(gateway: Gateway, query: str) -> None:
    text = await find_error(gateway, {"query": query})
    assert text == "invalid arguments for tool 'find_tool': field 'query': empty; say what you need done, e.g. " + (
        "'current time in Tokyo'"
    )


@pytest.mark.parametrize("backends", [[], ""])  # "" is a string-only client's empty list
async def test_an_empty_backends_list_is_refused_not_an_empty_search(gateway: Gateway, backends: Any) -> None:
    text = await find_error(gateway, {"query": "save a note", "backends": backends})
    assert text == "field 'backends': an empty list searches no backend; leave it out (or null) to search them all"


async def test_a_configured_backend_that_did_not_connect_is_named_as_such(gateway: Gateway) -> None:
    text = await find_error(gateway, {"query": "x", "backends": ["nocmd"]})
    assert text.startswith("field 'backends': backend 'nocmd' is configured but not connected (")
    assert "no-such-program" not in text  # its last error stays in /readyz and the log
    assert "unknown" not in text


async def test_an_unknown_backend_is_named_with_the_known_ones(gateway: Gateway) -> None:
    text = await find_error(gateway, {"query": "x", "backends": ["nosuch", "nocmd"]})
    assert text.startswith("field 'backends': backend 'nocmd' is configured but not connected (")
    assert text.endswith("; unknown backend(s) ['nosuch']; known: ['notes']")
    # A client's many or long names are not all repeated back.
    text = await find_error(gateway, {"query": "x", "backends": [f"{i}{'b' * 1000}" for i in range(100)]})
    assert len(text) < 2000 and text.endswith("; 92 more not shown")


def vmcp_index_search(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "search", *args, "-c", str(config), "--keyword"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "400"},  # the error panel on one line
    )


@pytest.mark.parametrize("query", ["", "   "])
def test_index_search_refuses_an_empty_query(gateway: Gateway, config: Path, query: str) -> None:
    found = vmcp_index_search(config, query)
    assert found.returncode == 2, found.stdout
    assert "Invalid value for 'QUERY': empty; say what you need done" in found.stderr
    assert "rank" not in found.stdout  # no table


def test_index_search_refuses_a_backend_not_in_the_catalogue(gateway: Gateway, config: Path) -> None:
    # The gateway has saved its catalogue (notes; nocmd did not connect): search reads it.
    found = vmcp_index_search(config, "save a note", "-b", "nosuch")
    assert found.returncode == 2, found.stdout
    assert "Invalid value for '--backend' / '-b': unknown backend(s) ['nosuch']; known: ['notes']" in found.stderr
    assert "rank" not in found.stdout
    found = vmcp_index_search(config, "save a note", "-b", "nocmd")
    assert found.returncode == 2, found.stdout
    assert "backend 'nocmd' is configured but has no tools in this catalogue; known: ['notes']" in found.stderr
    found = vmcp_index_search(config, "save a note", "-b", "notes")
    assert found.returncode == 0, found.stderr
    assert "notes_save_note" in found.stdout


async def test_an_integral_float_limit_is_read_as_an_integer(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("find_tool", {"query": "save a note", "limit": 3.0})
    assert not result.is_error, result.content
    assert result.structured_content is not None and 1 <= len(result.structured_content["tools"]) <= 3


@pytest.mark.parametrize("limit", ["²", "٣", "3.5", "1e3"])
async def test_a_limit_string_of_anything_but_ascii_digits_is_refused_naming_the_field(
    gateway: Gateway, limit: str
) -> None:
    text = await find_error(gateway, {"query": "save a note", "limit": limit})
    assert text.startswith("invalid arguments for tool 'find_tool': field 'limit': "), text
    assert "Traceback" not in gateway.output() and "raised" not in gateway.output()


async def test_json_strings_nested_past_the_parsers_depth_are_refused_naming_the_field(gateway: Gateway) -> None:
    deep = "[" * 5000 + "]" * 5000
    text = await find_error(gateway, {"query": "save a note", "backends": deep})
    assert text == "invalid arguments for tool 'find_tool': field 'backends': not a JSON list: nested too deeply"
    async with Client(gateway.url) as client:
        result = await client.call_tool("call_tool", {"tool_name": "notes_whoami", "arguments": deep})
    assert result.is_error
    assert result.content[0].text == (  # type: ignore[union-attr]
        "invalid arguments for tool 'call_tool': field 'arguments': not a JSON object: nested too deeply"
    )
    assert "Traceback" not in gateway.output() and "RecursionError" not in gateway.output()
