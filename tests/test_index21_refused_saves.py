"""An index_dir that refuses every write (read-only, as under readOnlyRootFilesystem; a file in its place): the
gateway serves, tries the save again at each interval's end (a full disk may be freed), and says so once, not
twice every interval for as long as it runs."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow]

SAVE_WARNING = "could not save the index cache to"
LOCK_WARNING = "cannot lock"
RETRY = "trying again in"


def test_an_index_dir_that_refuses_writes_is_warned_of_once_while_saves_are_retried(tmp_path: Path) -> None:
    blocked = tmp_path / "index-is-a-file"
    blocked.write_text("not a directory\n", encoding="utf-8")
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(blocked)}}
    )
    # Saves retried every 0.2 s instead of 30 s, so a handful of retries come within a second.
    with running_gateway(config, "--log-level", "debug", env={"VMCP_VECTORS_SAVE_INTERVAL": "0.2"}) as gateway:

        async def find() -> list[str]:
            async with Client(gateway.url) as client:
                result = await client.call_tool("find_tool", {"query": "save a note", "limit": 2})
                return [tool["name"] for tool in (result.structured_content or {})["tools"]]

        assert anyio.run(find)[0] == "notes_save_note"  # serving, whatever the disk says
        deadline = time.monotonic() + 30
        tries = 0
        while tries < 6:  # the first save and five retries at least, warned of or not
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.1)
            log = gateway.output()
            tries = log.count(SAVE_WARNING) + log.count(RETRY)
        log = gateway.output()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert sum(SAVE_WARNING in line for line in warnings) == 1, warnings
    assert sum(LOCK_WARNING in line for line in warnings) == 1, warnings
