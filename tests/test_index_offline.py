"""`vmcp index stats|search` after a gateway has run: read from the saved catalogue, no backend started, and
the same token figures as the server's (one definition: `tokens.tools_list_tokens`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config

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
    assert "tools as the gateway last listed them" in saved.stderr
    assert full_list_tokens(saved.stdout) == server_figure
    found = vmcp("index", "search", "save a note", "-c", str(config), "--keyword")
    assert found.returncode == 0, found.stderr
    assert "notes_save_note" in found.stdout
