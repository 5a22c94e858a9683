"""The audit's session start (`mcp_initialize`) for every kind of client, through a real gateway: a 2025-11-25
client's `initialize` handshake; a 2026-07-28 client's `server/discover` (the SDK `Client`'s default mode);
and a 2026-07-28 client that skips discover (its version pinned): its first request. Each client once, with
its name and version, however many requests it sends."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _events_once(path: Path, kind: str, count: int) -> list[dict[str, Any]]:
    """The audit's events once `count` of `kind` are written (the audit thread writes after the answer)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        if sum(e["type"] == kind for e in events) >= count:
            return events
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {kind} events in {path}")


def _starts(events: list[dict[str, Any]], client: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "mcp_initialize" and e["subjects"].get("client_name") == client]


async def test_each_client_is_audited_once_at_its_session_start_whatever_its_protocol(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    audit = tmp_path / "audit.log"
    with running_gateway(write_config(tmp_path, config)) as gateway:
        pinned = types.Implementation(name="modern-pinned", version="1.2")
        async with Client(gateway.url, mode="2026-07-28", client_info=pinned) as client:
            assert client.protocol_version == "2026-07-28"
            await client.list_tools()
            await client.list_tools()
        discovering = types.Implementation(name="modern-discovering", version="3.4")
        async with Client(gateway.url, client_info=discovering) as client:  # mode "auto": server/discover
            assert client.protocol_version == "2026-07-28"
            await client.list_tools()
        legacy = types.Implementation(name="legacy", version="5.6")
        async with Client(gateway.url, mode="legacy", client_info=legacy) as client:
            assert client.protocol_version == "2025-11-25"
            await client.list_tools()
        events = _events_once(audit, "mcp_tools_list", 4)

    (start,) = _starts(events, "modern-pinned")  # one, not one per request
    assert start["subjects"]["client_version"] == "1.2"
    assert start["metadata"]["extra"]["protocol_version"] == "2026-07-28"
    assert start["target"]["method"] == "initialize"  # no discover: inferred from its first request
    assert start["outcome"] == "success"

    (start,) = _starts(events, "modern-discovering")
    assert start["subjects"]["client_version"] == "3.4"
    assert start["metadata"]["extra"]["protocol_version"] == "2026-07-28"
    assert start["target"]["method"] == "server/discover"
    assert start["outcome"] == "success"

    (start,) = _starts(events, "legacy")
    assert start["subjects"]["client_version"] == "5.6"
    assert start["metadata"]["extra"]["protocol_version"] == "2025-11-25"
    assert start["target"]["method"] == "initialize"

    # Each session start comes before that client's first listing.
    order = [(e["type"], e["subjects"].get("client_name")) for e in events]
    for name in ("modern-pinned", "modern-discovering", "legacy"):
        assert order.index(("mcp_initialize", name)) < order.index(("mcp_tools_list", name)), order
