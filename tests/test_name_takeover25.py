"""A backend cannot take another backend's tool name, prompt, resource URI or URI template at runtime: a real
gateway over real stdio backends (tests/agg_backend.py) whose listings a test rewrites, a real SDK client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config
from tests.test_agg_live_catalogue import agg_backend, respec, until
from vmcp_opt.aggregation import BackendSource, Catalog, build_catalog
from vmcp_opt.backends.listing import BackendListing
from vmcp_opt.config import AggregationConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def answer(result: Any) -> str:
    return str(result.content[0].text)


async def read(client: Client, uri: str) -> str:
    contents = (await client.read_resource(uri)).contents[0]
    assert isinstance(contents, types.TextResourceContents)
    return contents.text


async def logged(gateway: Gateway, *parts: str) -> None:
    """Until one warning line of the gateway's log holds every one of `parts`."""

    async def found() -> bool:
        lines = gateway.output().splitlines()
        return any("WARNING" in line and all(part in line for part in parts) for line in lines)

    await until(found, f"a warning naming {parts}")


async def listed(client: Client, tool: str) -> None:
    async def present() -> bool:
        return tool in {t.name for t in (await client.list_tools()).tools}

    await until(present, f"{tool} listed")


async def test_a_backend_earlier_in_config_cannot_take_a_later_ones_names_and_uris_at_runtime(tmp_path: Path) -> None:
    victim = {"tools": ["save"], "prompts": ["p"], "resources": ["notes://all"], "templates": ["notes://note/{t}"]}
    backends = [agg_backend(tmp_path, "h"), agg_backend(tmp_path, "h_demo", **victim)]
    config = write_config(tmp_path, {"backends": backends, "aggregation": {"conflict_resolution": "prefix"}})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert answer(await client.call_tool("h_demo_save", {"text": "secret"})) == "h_demo:save"
            # h (first in config) now lists what exposes as h_demo's names, and h_demo's URIs.
            respec(
                tmp_path,
                "h",
                tools=["demo_save", "fresh"],
                prompts=["demo_p"],
                resources=["notes://all"],
                templates=["notes://note/{t}"],
            )
            await client.call_tool("h_relist_h", {})
            await listed(client, "h_fresh")  # the catalogue was rebuilt from h's new listing

            assert answer(await client.call_tool("h_demo_save", {"text": "secret"})) == "h_demo:save"
            prompt = await client.get_prompt("h_demo_p")
            assert prompt.messages[0].content.text == "h_demo:p"  # type: ignore[union-attr]
            assert await read(client, "notes://all") == "h_demo:notes://all"
            assert await read(client, "notes://note/x") == "h_demo:notes://note/x"
            assert [tool.name for tool in (await client.list_tools()).tools].count("h_demo_save") == 1
            for kind, name in [
                ("tool", "h_demo_save"),
                ("prompt", "h_demo_p"),
                ("resource", "notes://all"),
                ("resource template", "notes://note/{t}"),
            ]:
                await logged(gateway, "backend h:", f"{kind} '", "backend 'h_demo' already serves", name)


async def test_priority_keeps_a_tool_with_its_holder_when_a_preferred_backend_adds_it(tmp_path: Path) -> None:
    backends = [agg_backend(tmp_path, "a"), agg_backend(tmp_path, "b", tools=["search"])]
    aggregation = {"conflict_resolution": "priority", "priority": ["a", "b"]}
    config = write_config(tmp_path, {"backends": backends, "aggregation": aggregation})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert answer(await client.call_tool("search", {})) == "b:search"
            respec(tmp_path, "a", tools=["search", "fresh"])
            await client.call_tool("relist_a", {})
            await listed(client, "fresh")
            assert answer(await client.call_tool("search", {})) == "b:search"
            await logged(gateway, "backend a:", "tool 'search'", "backend 'b' already serves")


async def test_at_start_the_backend_first_in_config_order_gets_a_shared_uri(tmp_path: Path) -> None:
    backends = [
        agg_backend(tmp_path, "a", resources=["shared://x"]),
        agg_backend(tmp_path, "b", resources=["shared://x"]),
    ]
    config = write_config(tmp_path, {"backends": backends})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert await read(client, "shared://x") == "a:shared://x"


def catalog_of(config: AggregationConfig, previous: Catalog | None, **tools: list[str]) -> Catalog:
    sources = [BackendSource(name, BackendListing(tools=[tool(n) for n in names])) for name, names in tools.items()]
    return build_catalog(sources, config, previous)


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object"})


def test_a_holder_that_was_down_gets_its_name_back_from_whoever_served_it_meanwhile() -> None:
    config = AggregationConfig(conflict_resolution="priority", priority=["a", "b"])
    first = catalog_of(config, None, a=[], b=["search"])
    assert first.tools["search"].backend == "b"
    b_down = catalog_of(config, first, a=["search"])  # while b is away, a serves it
    assert b_down.tools["search"].backend == "a"
    b_back = catalog_of(config, b_down, a=["search"], b=["search"])
    assert b_back.tools["search"].backend == "b"
    b_without_it = catalog_of(config, b_back, a=["search"], b=[])
    assert b_without_it.tools["search"].backend == "a"
    assert catalog_of(config, b_without_it, a=["search"], b=["search"]).tools["search"].backend == "a"


def test_validate_warns_of_backend_names_whose_prefixed_names_meet(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: h, command: {sys.executable}, args: ['-c', 'pass']}}\n"
        f"  - {{name: h_demo, command: {sys.executable}, args: ['-c', 'pass']}}\n"
        f"  - {{name: other, command: {sys.executable}, args: ['-c', 'pass']}}\n",
        encoding="utf-8",
    )
    vmcp = str(Path(sys.executable).with_name("vmcp"))
    env = {**os.environ, "COLUMNS": "1000"}
    done = subprocess.run([vmcp, "validate", "-c", str(config)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "'h_demo'" in line]
    assert len(warnings) == 1 and "backends[0].name 'h'" in warnings[0] and "'h_demo_x'" in warnings[0]
    assert "'other'" not in done.stderr


def test_a_backend_slow_to_start_claims_its_names_by_priority_as_at_start() -> None:
    # Up only after the first build (an npx backend still starting): it is ranked as if it had been up, or who
    # serves a name would depend on which backend started first, replica by replica.
    config = AggregationConfig(conflict_resolution="priority", priority=["time", "docs"])
    first = catalog_of(config, None, docs=["search"])
    assert first.tools["search"].backend == "docs"
    joined = catalog_of(config, first, docs=["search"], time=["search", "now"])
    assert joined.tools["search"].backend == "time"
    # Once it has been in a build, a name it adds is a takeover like any other: the holder keeps it, also after
    # the newcomer went away and came back listing it.
    docs_adds = catalog_of(config, joined, docs=["search", "fetch"], time=["search", "now"])
    adds = catalog_of(config, docs_adds, docs=["search", "fetch"], time=["search", "now", "fetch"])
    assert adds.tools["fetch"].backend == "docs"
    away = catalog_of(config, adds, docs=["search", "fetch"])
    back = catalog_of(config, away, docs=["search", "fetch", "later"], time=["search", "now", "fetch", "later"])
    assert back.tools["fetch"].backend == "docs" and back.tools["search"].backend == "time"
    assert back.tools["later"].backend == "time"  # listed by both in one build, no holder: priority decides
    # Holding decides who serves a name, not where it is listed: tools/list stays in priority (config) order.
    assert list(back.tools) == ["search", "now", "later", "fetch"]


def test_lists_keep_priority_order_when_holders_keep_their_names() -> None:
    config = AggregationConfig(conflict_resolution="priority", priority=["a", "b"])
    listing = {"a": ["x://a"], "b": ["x://held", "x://b"]}
    first = build_catalog([resource_source(name, uris) for name, uris in listing.items()], config)
    later = {"a": ["x://new", "x://held"], "b": ["x://held", "x://b"]}
    rebuilt = build_catalog([resource_source(name, uris) for name, uris in later.items()], config, first)
    assert rebuilt.resources["x://held"].backend == "b"
    assert list(rebuilt.resources) == ["x://new", "x://held", "x://b"]


def resource_source(backend: str, uris: list[str]) -> BackendSource:
    resources = [types.Resource(uri=uri, name=uri) for uri in uris]
    return BackendSource(backend, BackendListing(resources=resources))
