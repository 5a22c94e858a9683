"""A gateway stopped while it embeds a catalogue: a write of `vectors.npz` cut by the process's end (it leaves by
`os._exit` while the embedder runs: server/runner.py, `_leaving`; or it is killed) leaves its temporary
`.vectors-<pid>-<hex>.tmp` in the index directory, 11-15 MB each at a few thousand tools, for ever. The next
start removes it, under the index's lock; a temporary file whose writer still runs stays.

Real gateways over the catalogue backend (examples/backends/catalog_server.py); the first one gets SIGTERM
while it embeds. Whether its own write was cut depends on when the signal lands, so the file such a cut leaves
is put there as it would be: named with the stopped gateway's pid, as an earlier release named them (`.vectors-
<pid>-<hex>.tmp`; now `.vectors-<host>-<pid>-<nonce>-<hex>.tmp`, tests/test_vectors19_names.py), still removed."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import EXAMPLES, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOLS = 100  # an embedding of about a second on this machine: the signal lands while it runs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(tmp_path: Path) -> Path:
    catalog = {
        "name": "catalog",
        "command": sys.executable,
        "args": [str(EXAMPLES / "backends" / "catalog_server.py"), "--tools", str(TOOLS)],
    }
    return write_config(tmp_path, {"backends": [catalog], "optimizer": {"enabled": True, "index_dir": "index"}})


def wait_for(check: Any, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen within {within}s"
        time.sleep(0.05)


async def test_the_next_start_removes_a_write_cut_by_a_stop_while_embedding(tmp_path: Path) -> None:
    path = config(tmp_path)
    with running_gateway(path) as first:
        wait_for(lambda: "embedding model" in first.output() and "loaded" in first.output(), "the model loaded")
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(60)
    model_dir = next((tmp_path / "index").iterdir())
    assert model_dir.is_dir(), model_dir
    cut = model_dir / f".vectors-{first.proc.pid}-0badc0de.tmp"  # its writer is gone: the process has exited
    cut.write_bytes(b"PK\x03\x04 half of an npz")
    running = model_dir / f".vectors-{os.getpid()}-feedf00d.tmp"  # its writer (this process) still runs
    running.write_bytes(b"PK\x03\x04 being written")

    with running_gateway(path) as second:
        async with Client(second.url) as client:
            with anyio.fail_after(60):
                while True:  # the next start's embedding took the index's lock (and saved)
                    found = await client.call_tool("find_tool", {"query": "weather forecast", "limit": 1})
                    assert found.structured_content is not None, found.content
                    if found.structured_content["ranking"] == "hybrid":
                        break
                    await anyio.sleep(0.1)
        # Saved after the vectors are swapped in: the ranking can say "hybrid" before the file is there.
        wait_for(lambda: (model_dir / "vectors.npz").exists(), "vectors.npz saved")
        assert not cut.exists(), sorted(p.name for p in model_dir.iterdir())
        assert running.exists()
        assert f"removed {cut}" in second.output()
    running.unlink()
    # Nothing of the second gateway's own writes is left either.
    assert not list(model_dir.glob(".vectors-*.tmp")), sorted(p.name for p in model_dir.iterdir())
