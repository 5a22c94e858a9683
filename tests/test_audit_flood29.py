"""Refused requests cannot rotate a caller's audit events away: a flood of bad keys from one address is written as
its first refusal and one summary with a `count`; a sweep of addresses (X-Forwarded-For behind a trusted proxy,
IPv6 ones of one /64 and IPv4 ones past the tracked table) costs at most `MAX_TRACKED` events, the rest folded
into an `other_sources` summary. Every refusal is counted, none lost at shutdown. Over real processes: `vmcp serve`
behind API keys with the demo backend, an SDK client, plain HTTP requests; small audit files (3 x 100 KB)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    api_keys_file,
    bearer_client,
    demo_backend,
    running_gateway,
    write_config,
)
from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import AuditConfig
from vmcp_opt.routing.operations import Operation
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.audit_summaries import MAX_TRACKED, RefusalSummaries, source_key

FLOOD = 900  # bad keys from one address: with the sweeps ~640 KB of events one by one, more than 3 files hold
IPV6_SWEEP = 200  # addresses of one /64
IPV4_SWEEP = MAX_TRACKED + 40  # more addresses than the table follows


def audit_events(directory: Path) -> list[dict[str, Any]]:
    """Every event in the kept audit files, oldest file first."""
    files = sorted(directory.glob("audit.log*"), key=lambda path: path.name, reverse=True)
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def refuse(client: httpx2.Client, url: str, forwarded_for: str | None = None) -> None:
    headers = {**RAW_HEADERS, "Authorization": "Bearer vmcp_bogus-key-xxxxxxxxxxxxxxxxxxxx"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    answer = client.post(url, json=RAW_INITIALIZE, headers=headers)
    assert answer.status_code == 401, answer.text


async def call_as(url: str, key: str) -> None:
    async with bearer_client(url, key) as client:
        saved = await client.call_tool("demo_save_note", {"title": "EVIDENCE", "text": "kept"})
    assert not saved.is_error, saved


def test_a_flood_of_refused_requests_is_summarised_and_the_callers_events_survive(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"]})
    config = {
        "backends": [demo_backend("demo")],
        "server": {"trusted_proxies": ["127.0.0.1/32"]},  # the sweeps' addresses come in X-Forwarded-For
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "max_file_bytes": 100_000, "backups": 2}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        asyncio.run(call_as(gateway.url, keys["alice"]))
        with httpx2.Client(timeout=30) as client:
            for _ in range(FLOOD):
                refuse(client, gateway.url)
            for host in range(IPV6_SWEEP):
                refuse(client, gateway.url, f"2001:db8:0:1::{host + 1:x}")
            for host in range(IPV4_SWEEP):  # the table is full before the sweep ends
                refuse(client, gateway.url, f"10.0.{host // 250}.{host % 250 + 1}")
    # Stopped: the summaries of intervals still open were written at shutdown.

    events = audit_events(tmp_path)
    assert [e for e in events if e["type"] == "mcp_tool_call" and e["target"].get("name") == "demo_save_note"]
    denied = [e for e in events if e["type"] == "vmcp_auth_denied"]
    summaries = [e for e in denied if "count" in e["metadata"]["extra"]]
    singles = [e for e in denied if "count" not in e["metadata"]["extra"]]
    assert len(singles) + sum(e["metadata"]["extra"]["count"] for e in summaries) == FLOOD + IPV6_SWEEP + IPV4_SWEEP

    local = [e for e in summaries if e["source"]["value"] == "127.0.0.1"]
    assert [e["metadata"]["extra"]["count"] for e in local] == [FLOOD - 1]  # its first refusal was written singly
    extra = local[0]["metadata"]["extra"]
    assert extra["reasons"] == {"invalid_token": FLOOD - 1} and extra["error_type"] == "invalid_token"
    assert extra["interval_start"] <= extra["interval_end"] == local[0]["loggedAt"]
    assert local[0]["subjects"]["identified_by"] == "anonymous" and local[0]["outcome"] == "denied"

    one_host = [e for e in summaries if e["source"]["value"].startswith("2001:db8:0:1::")]
    assert [e["metadata"]["extra"]["count"] for e in one_host] == [IPV6_SWEEP - 1]  # one /64: one source

    assert len(singles) <= MAX_TRACKED  # the table: one event per source followed, the rest folded
    [others] = [e for e in summaries if e["metadata"]["extra"].get("other_sources")]
    assert others["source"] == {"type": "network", "value": ""} and others["subjects"] == {}
    assert others["metadata"]["extra"]["count"] == others["metadata"]["extra"]["reasons"]["invalid_token"] > 0
    assert "bogus-key" not in (tmp_path / "audit.log").read_text()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal() -> Operation:
    return Operation("authenticate", Caller("unauthenticated", Identification.ANONYMOUS, ""), outcome="denied")


def test_a_refusal_after_its_interval_is_written_again_and_the_interval_summarised() -> None:
    clock = Clock()
    table = RefusalSummaries(interval=10.0, clock=clock, wall_clock=clock)
    assert table.wait() is None
    assert table.admit("vmcp_auth_denied", "address:10.0.0.1", refusal(), "invalid_token")
    assert not any(table.admit("vmcp_auth_denied", "address:10.0.0.1", refusal(), "invalid_token") for _ in range(3))
    assert table.admit("vmcp_auth_denied", "address:10.0.0.1", refusal(), "missing")  # another reason: its own
    clock.now += 4
    assert table.wait() == 6.0 and table.ended() == []
    clock.now += 6
    assert table.admit("vmcp_auth_denied", "address:10.0.0.1", refusal(), "invalid_token")  # a new interval
    [ended] = table.ended()
    assert ended.fields() == {
        "count": 3,
        "interval_start": 1000.0,
        "interval_end": 1010.0,
        "reasons": {"invalid_token": 3},
    }
    assert table.drain() == []  # the new interval has only its first, written


def test_sources_past_the_table_fold_into_one_summary_and_drain_keeps_every_count() -> None:
    clock = Clock()
    table = RefusalSummaries(interval=10.0, max_tracked=2, clock=clock, wall_clock=clock)
    written = [
        table.admit("vmcp_rate_limited", f"address:10.0.0.{n}", refusal(), "rate_limits.shared") for n in range(5)
    ]
    assert written == [True, True, False, False, False]
    assert not table.admit("vmcp_rate_limited", "address:10.0.0.0", refusal(), "rate_limits.shared")
    clock.now += 1
    windows = sorted(table.drain(), key=lambda window: window.other_sources)
    assert [(w.count, w.other_sources) for w in windows] == [(1, False), (3, True)]
    assert windows[1].fields()["interval_end"] == 1001.0


def test_the_writer_writes_a_summary_when_its_interval_ends(tmp_path: Path) -> None:
    """The audit writer thread wakes for an interval's end, with no other event to write (a real file)."""
    log = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "a.log")))
    log.refusals = RefusalSummaries(interval=0.2)
    try:
        for _ in range(5):
            log.auth_denied("invalid_token", "192.0.2.7")
        deadline = time.monotonic() + 30
        while len(lines := lines_of(tmp_path / "a.log")) < 2:
            assert time.monotonic() < deadline, "no summary written"
            time.sleep(0.05)
    finally:
        log.close()
    first, summary = map(json.loads, lines)
    assert "count" not in first["metadata"]["extra"] and summary["metadata"]["extra"]["count"] == 4
    assert summary["source"] == {"type": "network", "value": "192.0.2.7"}
    assert summary["metadata"]["extra"]["error_type"] == "invalid_token"


def test_an_ipv6_source_is_its_64_and_a_mapped_ipv4_its_address() -> None:
    assert source_key("2001:db8:0:1::5") == source_key("2001:db8:0:1:ffff::9") == "2001:db8:0:1::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1" and source_key(None) == "" and source_key("?") == "?"
