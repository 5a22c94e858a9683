"""Reads routed by resource templates: the first template a URI matches serves it (priority, then config order,
then listing order), found without trying every template on the event loop.

Before, every `resources/read` of a URI no listed resource names tried each template in turn: with thousands of
templates listed, one read of a 2 KB URI held the event loop for seconds. A real `vmcp serve`, real stdio
backends (tests/agg_backend.py, which answers a read with "<its name>:<the URI>") and the SDK client.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, running_gateway, write_config
from tests.test_agg_live_catalogue import agg_backend
from vmcp_opt.aggregation.template_index import MAX_UNANCHORED_TEMPLATES

pytestmark = pytest.mark.anyio
INVALID_PARAMS = -32602


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _overlapping(directory: Path, aggregation: dict[str, Any] | None = None) -> Path:
    """Two backends whose templates overlap; in each pair the shorter literal prefix is listed first, by `first`."""
    first = agg_backend(directory, "first", templates=["sha{+rest}/{id}", "docs://{+path}"])
    second = agg_backend(directory, "second", templates=["shared://{kind}/{id}", "docs://readme{.ext}", "only://{id}"])
    return write_config(directory, {"backends": [first, second], "aggregation": aggregation or {}})


async def _served_by(client: Client, uri: str) -> str:
    text = (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
    backend, _, read = text.partition(":")
    assert read == uri
    return backend


async def test_a_uri_two_backends_templates_match_is_served_by_the_first_in_config_order(tmp_path: Path) -> None:
    with running_gateway(_overlapping(tmp_path)) as gateway:
        async with Client(gateway.url) as client:
            assert await _served_by(client, "shared://x/1") == "first"  # `sha{+rest}/{id}`, a shorter prefix
            assert await _served_by(client, "docs://readme.md") == "first"
            assert await _served_by(client, "only://7") == "second"
            assert await _served_by(client, "sha/2") == "first"


async def test_priority_puts_a_backends_templates_first(tmp_path: Path) -> None:
    aggregation = {"conflict_resolution": "priority", "priority": ["second"]}
    with running_gateway(_overlapping(tmp_path, aggregation)) as gateway:
        async with Client(gateway.url) as client:
            assert await _served_by(client, "shared://x/1") == "second"
            assert await _served_by(client, "docs://readme.md") == "second"
            assert await _served_by(client, "docs://guide/intro.md") == "first"
            assert await _served_by(client, "shared/3") == "first"  # only `sha{+rest}/{id}` matches it


def _many_templates(directory: Path) -> dict[str, Any]:
    """2,000 templates that begin with a variable, 3,000 with schemes of their own, then one more."""
    unanchored = [f"{{v{i}}}/{{b}}/{{c}}" for i in range(2000)]
    anchored = [f"t{i}://{{id}}" for i in range(3000)]
    return agg_backend(directory, "many", templates=[*unanchored, *anchored, "late://{+path}"])


def _wait_logged(gateway: Gateway, text: str) -> str:
    deadline = time.monotonic() + 20
    while text not in (output := gateway.output()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{output[-3000:]}"
        time.sleep(0.1)
    return output


async def test_a_backend_listing_thousands_of_templates_is_read_through_promptly(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [_many_templates(tmp_path)]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            listed = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
            # Templates that begin with a variable are candidates for every URI: past the bound they are dropped.
            assert sum(t.startswith("{") for t in listed) == MAX_UNANCHORED_TEMPLATES
            assert len(listed) == MAX_UNANCHORED_TEMPLATES + 3001
            assert await _served_by(client, "t2999://abc") == "many"
            assert await _served_by(client, "late://a/b") == "many"
            assert await _served_by(client, "a/b/c") == "many"
            unlisted = "x" * 4000
            started = time.monotonic()
            with pytest.raises(MCPError) as absent:
                await client.read_resource(unlisted)
            took = time.monotonic() - started
        assert absent.value.error.message.startswith("Resource not found: 'xxx")
        assert took < 4.0, f"a read of an unlisted URI took {took:.1f}s (tried against every template: ~8 s)"
        _wait_logged(gateway, f"more than {MAX_UNANCHORED_TEMPLATES} such templates")


async def test_a_long_uri_costlier_to_match_than_the_bound_gets_a_clear_error(tmp_path: Path) -> None:
    """Each template's scan of a URI costs its length times its variables: a 60 KB URI that 20 templates
    could serve is refused with an error saying why, not tried against them all (~20 ms each) as before."""
    wide = agg_backend(tmp_path, "wide", templates=[f"wide://{{a}}/{{b}}/{{c{i}}}" for i in range(20)])
    with running_gateway(write_config(tmp_path, {"backends": [wide]})) as gateway:
        async with Client(gateway.url) as client:
            assert await _served_by(client, "wide://a/b/c") == "wide"
            with pytest.raises(MCPError) as refused:
                await client.read_resource("wide://?" + "x" * 60_000 + "/b/c")
    error = refused.value.error
    assert error.code == INVALID_PARAMS, error
    assert "could not be matched against the resource templates that could serve it" in error.message
    assert error.data is not None and error.data["max_template_match_steps"] > 0
