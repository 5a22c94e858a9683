"""Names two backends could both claim: config order decides a shared URI, at start and at every rebuild, and a
rebuild that moves a served name to another backend is warned of, naming both (a real gateway over real stdio
backends, tests/agg_backend.py, a real client); `vmcp validate` warns of backend names whose prefixed names can
meet."""

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


async def test_at_start_the_backend_first_in_config_order_gets_a_shared_uri(tmp_path: Path) -> None:
    backends = [
        agg_backend(tmp_path, "a", resources=["shared://x"]),
        agg_backend(tmp_path, "b", resources=["shared://x"]),
    ]
    config = write_config(tmp_path, {"backends": backends})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert await read(client, "shared://x") == "a:shared://x"


async def test_a_rebuild_that_moves_a_served_name_to_another_backend_is_warned_of_naming_both(
    tmp_path: Path,
) -> None:
    victim = {"tools": ["save"], "resources": ["notes://all"], "templates": ["notes://note/{t}"]}
    backends = [agg_backend(tmp_path, "h"), agg_backend(tmp_path, "h_demo", **victim)]
    config = write_config(tmp_path, {"backends": backends, "aggregation": {"conflict_resolution": "prefix"}})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            assert answer(await client.call_tool("h_demo_save", {})) == "h_demo:save"
            # h (first in config) now lists what exposes as h_demo's tool, and h_demo's URIs.
            respec(
                tmp_path, "h", tools=["demo_save", "fresh"], resources=["notes://all"], templates=["notes://note/{t}"]
            )
            await client.call_tool("h_relist_h", {})
            await listed(client, "h_fresh")
            # Config order decides, as it would on a replica started now: h serves them, and says so loudly.
            assert answer(await client.call_tool("h_demo_save", {})) == "h:demo_save"
            assert await read(client, "notes://all") == "h:notes://all"
            for kind, name in [("tool", "h_demo_save"), ("resource", "notes://all"), ("resource template", "notes://")]:
                await logged(gateway, f"{kind} '{name}", "moved from backend 'h_demo' to backend 'h'")
            # A name its holder stops listing goes quietly.
            respec(tmp_path, "h_demo", tools=["other"])
            await client.call_tool("h_demo_relist_h_demo", {})
            await listed(client, "h_demo_other")
        assert gateway.output().count("moved from backend") == 3


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
