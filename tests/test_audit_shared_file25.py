"""Several real `vmcp serve` processes on one audit file (deploy/systemd's several instances of one config): no
event lost or written twice, no file past `max_file_bytes`, and a file renamed away (logrotate) is followed by a
new one at its path."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, running_gateways, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CAP = 2048  # a tool call's event is ~600 bytes: a file holds three, and the processes rotate often
CALLS = 25  # per gateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def audit_config(backups: int) -> dict[str, Any]:
    audit = {"enabled": True, "output": "audit.log", "max_file_bytes": CAP, "backups": backups, "flush_interval": 0}
    return {"backends": [demo_backend("demo")], "telemetry": {"audit": audit}}


def tool_calls(paths: list[Path]) -> list[tuple[str, str]]:
    """(client name, request id) of every tool call event in `paths`; each line must be a whole JSON object."""
    found = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["type"] == "mcp_tool_call":
                found.append((event["subjects"]["client_name"], event["metadata"]["extra"]["request_id"]))
    return found


def audit_files(directory: Path) -> list[Path]:
    return [path for path in directory.glob("audit.log*") if not path.name.endswith(".lock")]


def calls_seen(paths: list[Path]) -> int:
    """Tool call events in `paths` while the gateways write and rotate them: a file renamed away under the read
    or a line caught mid-write counts as none yet (the final check reads the stopped gateways' files)."""
    try:
        return len(tool_calls(paths))
    except (FileNotFoundError, ValueError):
        return 0


async def call_many(gateway: Gateway, name: str, finished: list[str]) -> None:
    async with Client(gateway.url, client_info=types.Implementation(name=name, version="1")) as client:
        for _ in range(CALLS):
            await client.call_tool("demo_whoami", {})
        finished.append(name)


async def wait_for(predicate: Any, what: str) -> None:
    """Polls `predicate` until it holds; fails after 30 s with `what` it waited for."""
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within 30 s: {what}")
        await anyio.sleep(0.05)


async def test_two_gateways_on_one_file_write_every_event_once_and_keep_every_file_within_its_bound(
    tmp_path: Path,
) -> None:
    with running_gateways(write_config(tmp_path, audit_config(backups=100)), 2, "--log-level", "warning") as gateways:
        done: list[str] = []
        async with anyio.create_task_group() as group:  # both at once: their batches and rotations overlap
            for index, gateway in enumerate(gateways):
                group.start_soon(call_many, gateway, f"client-{index}", done)
        assert sorted(done) == ["client-0", "client-1"]
        wanted = len(gateways) * CALLS

        await wait_for(
            lambda: calls_seen(audit_files(tmp_path)) >= wanted, f"{wanted} tool call events in {tmp_path}/audit.log*"
        )
    files = audit_files(tmp_path)
    sizes = {path.name: path.stat().st_size for path in files}
    assert not {name: size for name, size in sizes.items() if size > CAP}, sizes
    assert len(files) > 5, sizes  # rotated many times, by both processes
    calls = tool_calls(files)
    twice = [key for key, n in Counter(calls).items() if n != 1]
    assert not twice, twice  # a request id is unique within its client's session
    assert Counter(name for name, _ in calls) == {"client-0": CALLS, "client-1": CALLS}


async def test_an_audit_file_renamed_away_is_followed_by_a_new_one_at_its_path(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    moved = tmp_path / "audit.log-20261206"
    with running_gateway(write_config(tmp_path, audit_config(backups=2)), "--log-level", "warning") as gateway:
        async with Client(gateway.url, client_info=types.Implementation(name="c", version="1")) as client:
            await client.call_tool("demo_whoami", {})
            await wait_for(lambda: calls_seen([audit]) == 1, "the first call's event in audit.log")
            audit.rename(moved)  # logrotate without copytruncate
            await client.call_tool("demo_whoami", {})
            await wait_for(lambda: calls_seen([audit]) == 1, "the second call's event in audit.log")
    assert len(tool_calls([moved])) == 1  # the renamed file holds only what was written before the rename
    assert audit.stat().st_mode & 0o777 == 0o600
