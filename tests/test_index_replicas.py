"""Three replicas starting together on one empty index_dir embed each tool once, not three times.

Real `vmcp serve` processes, all started before any is waited for, each with its own demo backend and
the real embedding model; the count is read from what each logs (`index updated: embedded N, …`).
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateways, write_config

pytestmark = [pytest.mark.slow]
UPDATED = re.compile(r"index updated: embedded (\d+), reused (\d+), removed \d+ \((\d+) tools")


async def vectors_ready(gateway: Gateway) -> None:
    """Until find_tool ranks with vectors (each replica loads the model and embeds in the background)."""
    async with Client(gateway.url) as client:
        with anyio.fail_after(180):
            while True:
                result = await client.call_tool("find_tool", {"query": "save a note"})
                assert result.structured_content is not None, result.content
                if result.structured_content["ranking"] == "hybrid":
                    return
                await anyio.sleep(0.5)


def test_three_replicas_on_one_empty_index_embed_each_tool_once(tmp_path: Path) -> None:
    index_dir = tmp_path / "shared-index"
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True, "index_dir": str(index_dir), "usage": False},
    }
    path = write_config(tmp_path, config)
    with running_gateways(path, 3, ready_timeout=120) as replicas:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                for replica in replicas:
                    group.start_soon(vectors_ready, replica)

        anyio.run(main)
    updates = [[tuple(map(int, m)) for m in UPDATED.findall(r.output())] for r in replicas]
    assert all(updates), [r.output() for r in replicas]
    tools = updates[0][-1][2]
    embedded = sum(done for replica in updates for done, _, _ in replica)
    assert embedded == tools, updates  # once in all, whoever got there first
    # Every replica ends with every tool's vector, embedded or read from what another saved.
    assert all(replica[-1][0] + replica[-1][1] == tools for replica in updates), updates
