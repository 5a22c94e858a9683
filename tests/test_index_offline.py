"""`vmcp index stats|search` after a gateway has run: read from the saved catalogue, no backend started, and
the same token figures as the server's (one definition: `tokens.tools_list_tokens`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp import Client

from tests.support import EXAMPLES, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=300, check=False
    )


def full_list_tokens(stats_output: str) -> int:
    found = re.search(r"tools/list, full\s+([\d,]+) tokens", stats_output)
    assert found, stats_output
    return int(found.group(1).replace(",", ""))


async def test_index_stats_reads_what_the_gateway_saved_and_counts_tokens_as_the_server_does(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx")}},
    )
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            answer = (await client.call_tool("find_tool", {"query": "save a note"})).structured_content
    assert answer is not None
    server_figure = answer["tokens"]["full_tool_list"]

    live = vmcp("index", "stats", "-c", str(config), "--refresh")
    assert live.returncode == 0, live.stderr
    assert full_list_tokens(live.stdout) == server_figure

    # The backend can no longer start: stats and search answer from the saved catalogue all the same.
    write_config(
        tmp_path,
        {
            "backends": [{"name": "notes", "command": str(tmp_path / "no-such-program")}],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx")},
        },
    )
    saved = vmcp("index", "stats", "-c", str(config))
    assert saved.returncode == 0, saved.stderr
    assert "tools as vmcp index last listed them" in saved.stderr  # `stats --refresh` above saved it last
    assert full_list_tokens(saved.stdout) == server_figure
    found = vmcp("index", "search", "save a note", "-c", str(config), "--keyword")
    assert found.returncode == 0, found.stderr
    assert "notes_save_note" in found.stdout


def saved_catalogue(index_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((index_dir / "catalogue.json").read_text(encoding="utf-8"))
    return data


def by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {tool["name"]: tool for tool in tools}


def first_hit(search_output: str) -> str:
    row = next(line for line in search_output.splitlines() if re.search(r"│\s+1\s+│", line))
    return row.split("│")[2].strip()


async def test_index_build_keeps_the_workflow_tools_the_gateway_lists(tmp_path: Path) -> None:
    """`vmcp index build` asks the backends itself: its listing holds the configured workflows as the gateway's
    does (same records, same tokens), so it removes nothing the gateway indexed, and its note says who listed."""
    demo = yaml.safe_load((EXAMPLES / "demo.yaml").read_text(encoding="utf-8"))
    time_backend = next(b for b in demo["backends"] if b["name"] == "time")
    index_dir = tmp_path / "idx"
    config = write_config(
        tmp_path,
        {
            "backends": [{**time_backend, "command": sys.executable}],
            "aggregation": demo["aggregation"],
            "workflows": demo["workflows"],
            "optimizer": {"enabled": True, "index_dir": str(index_dir)},
        },
    )
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            with anyio.fail_after(120):  # the gateway saves its listing before it embeds; wait for its vectors
                while True:
                    answer = (await client.call_tool("find_tool", {"query": "world clock"})).structured_content
                    if answer is not None and answer["ranking"] == "hybrid":
                        break
                    await anyio.sleep(0.3)
    by_gateway = saved_catalogue(index_dir)
    names = {tool["name"] for tool in by_gateway["tools"]}
    assert {"world_clock", "remember_with_time", "time_convert_time"} <= names
    searched = vmcp("index", "search", "time in several cities at once", "-c", str(config))
    assert searched.returncode == 0, searched.stderr
    assert first_hit(searched.stdout) == "world_clock"
    assert "tools as the gateway last listed them" in searched.stderr

    built = vmcp("index", "build", "-c", str(config))
    assert built.returncode == 0, built.stderr
    assert f"{len(names)} tools indexed" in built.stdout, built.stdout
    assert "embedded 0" in built.stdout and "removed 0" in built.stdout, built.stdout
    by_build = saved_catalogue(index_dir)
    assert by_name(by_build["tools"]) == by_name(by_gateway["tools"])  # names, descriptions, schemas, sources
    assert by_build["tools_list_tokens"] == by_gateway["tools_list_tokens"]

    searched = vmcp("index", "search", "time in several cities at once", "-c", str(config))
    assert searched.returncode == 0, searched.stderr
    assert first_hit(searched.stdout) == "world_clock"
    assert "tools as vmcp index last listed them" in searched.stderr
