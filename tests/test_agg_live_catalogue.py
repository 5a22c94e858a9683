"""The catalogue over real backend processes whose listings change: a real gateway, a real SDK client."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, running_gateway, write_config

pytestmark = pytest.mark.anyio
BACKEND = Path(__file__).resolve().parent / "agg_backend.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def agg_backend(directory: Path, name: str, **spec: Any) -> dict[str, Any]:
    """A config entry for tests/agg_backend.py serving `spec` (rewritten with `respec`)."""
    respec(directory, name, **spec)
    env = {"AGG_SPEC": str(directory / f"{name}.json"), "AGG_NAME": name}
    return {"name": name, "command": sys.executable, "args": [str(BACKEND)], "env": env}


def respec(directory: Path, name: str, **spec: Any) -> None:
    (directory / f"{name}.json").write_text(json.dumps(spec), encoding="utf-8")


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await anyio.sleep(0.1)


def backend_state(gateway: Gateway, name: str) -> str:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5).json()
    return str(next(b["state"] for b in body["backends"] if b["name"] == name))


def kill_backend(gateway: Gateway, name: str) -> None:
    for child in gateway.children():
        try:
            if child.environ().get("AGG_NAME") == name:
                child.kill()
        except psutil.Error:
            continue


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def test_a_tool_its_backend_removed_is_unknown_once_that_backend_is_down(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [agg_backend(tmp_path, "a", tools=["old"])]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert "a_old" in await tool_names(client)
            respec(tmp_path, "a", tools=["new"])
            await client.call_tool("a_relist_a", {})

            async def renamed() -> bool:
                return await tool_names(client) == {"a_relist_a", "a_new"}

            await until(renamed, "the backend's rename reaches tools/list")
            respec(tmp_path, "a", down=True)  # it cannot come back
            kill_backend(gateway, "a")

            async def down() -> bool:
                return backend_state(gateway, "a") != "ready"

            await until(down, "backend a leaves the catalogue")
            # Still listed when it went down: the caller is told where it went.
            current = await client.call_tool("a_new", {})
            assert current.is_error and "served by backend 'a'" in current.content[0].text  # type: ignore[union-attr]
            # Removed by the backend before: it is no tool of a down backend, it is no tool at all.
            with pytest.raises(MCPError, match="Unknown tool: 'a_old'"):
                await client.call_tool("a_old", {})


async def test_a_backend_that_does_not_serve_an_offered_list_keeps_its_tools(tmp_path: Path) -> None:
    entry = agg_backend(tmp_path, "a", tools=["search"], resources=["mem://notes"])
    entry["env"]["AGG_NO_TEMPLATES"] = "1"  # offers resources, answers resources/templates/list -32601
    config = write_config(tmp_path, {"backends": [entry]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert await tool_names(client) == {"a_relist_a", "a_search"}
            assert [r.uri for r in (await client.list_resources()).resources] == ["mem://notes"]
            answer = await client.call_tool("a_search", {})
            assert answer.content[0].text == "a:search"  # type: ignore[union-attr]
        log = gateway.output()
        assert "backend a: answers resources/templates/list with 'Method not found'" in log
        assert "served without resource templates" in log


async def test_a_misspelt_filter_and_a_clashing_override_are_named_in_the_log(tmp_path: Path) -> None:
    backends = [
        agg_backend(tmp_path, "a", tools=["search", "save"], prompts=["review", "b_review"]),
        agg_backend(tmp_path, "b", tools=["search", "delete_file"], prompts=["review"]),
    ]
    aggregation = {
        "conflict_resolution": "manual",
        "tools": {
            "b": {
                "exclude": ["delete_fle"],  # meant to hide delete_file
                "overrides": {"search": {"name": "save"}, "b_search": {"description": "keyed by the served name"}},
            }
        },
    }
    config = write_config(tmp_path, {"backends": backends, "aggregation": aggregation})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert await tool_names(client) == {"relist_a", "search", "save", "relist_b", "delete_file"}
            served = {p.name: p.description for p in (await client.list_prompts()).prompts}
            assert served == {"review": "review of a", "b_review": "b_review of a"}
        log = gateway.output()
    assert "aggregation.tools.b.exclude: 'delete_fle' matches no tool backend b lists" in log
    assert "aggregation.tools.b.overrides: backend b lists no tool 'b_search'" in log
    # The override b's search was given is taken: the warning says to change it, not to set it.
    assert (
        "backend b: tool 'search' dropped: backend 'a' already exposes 'save'; "
        "choose another name in aggregation.tools.b.overrides.search.name" in log
    )
    # Under manual, b's clashing prompt would be b_review, which a serves: it is dropped aloud.
    assert "backend b: prompt 'review' dropped: backend 'a' already exposes 'b_review'" in log
