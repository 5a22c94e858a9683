"""The demo's memory server keeps its knowledge graph per user, in the gateway's data directory.

It was `/tmp/vmcp-demo-memory.jsonl`: one file for every clone and every user of the machine, so one user's
demo read and wrote another's graph, and a file another user created made the memory backend fail.
`examples/demo.yaml` now gives it `${VMCP_DATA_DIR}/demo-memory.jsonl`, which loading expands to the
gateway's data directory (`data_dir`, else the per-user one), created if missing.

A real demo gateway (`vmcp serve` with no `-c`), its real memory server, a real MCP client.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from tests.support import Gateway, free_port, stop_process, wait_http, wait_started

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
DEMO_FILE = "demo-memory.jsonl"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def running_demo(directory: Path, env: dict[str, str]) -> Iterator[Gateway]:
    """`vmcp serve` with no config (the bundled demo), optimizer off (the memory server is what is tested);
    its log in `directory`, not beside the demo's file as `running_gateway`'s would be."""
    port = free_port()
    log = directory / "gateway.log"
    base = {name: value for name, value in os.environ.items() if name != "VMCP_DATA_DIR"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--port", str(port), "--no-optimizer"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**base, "HF_HUB_OFFLINE": "1", **env},
        )
    gateway = Gateway(proc, port, log)
    try:
        wait_http(f"{gateway.base}/healthz", timeout=60, proc=proc)
        wait_started(gateway, 60)
        yield gateway
    finally:
        stop_process(proc)


@pytest.mark.parametrize("where", ["per-user default", "data_dir moved"])
async def test_the_demo_memory_server_keeps_its_graph_in_the_users_data_directory(where: str, tmp_path: Path) -> None:
    if where == "per-user default":  # platformdirs on Linux: $XDG_DATA_HOME/vmcp-opt
        env, expected = {"XDG_DATA_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "vmcp-opt" / DEMO_FILE
    else:
        env, expected = {"VMCP_DATA_DIR": str(tmp_path / "state")}, tmp_path / "state" / DEMO_FILE
    assert not expected.parent.exists()  # created for the memory server, which cannot write into a missing one
    entity = {"name": f"small21-{tmp_path.name}", "entityType": "subject", "observations": ["wrote a test"]}

    with running_demo(tmp_path, env) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            result = await client.call_tool("memory_create_entities", {"entities": [entity]})
            assert not result.is_error, result.content

    lines = [json.loads(line) for line in expected.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert [line["name"] for line in lines] == [entity["name"]]
