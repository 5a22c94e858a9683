"""A flood of 2026-07-28 retries with a forged `requestState` cannot rotate the audit trail: each is refused at the
boundary before any handler (a client's bad input, at request rate, as a bad key is), so per source, reason and
minute the first is written whole (marked `round_refused`, with its request id and tool) and the rest are one
summary event with their `count` (telemetry/audit_summaries.py). Over real processes: `vmcp serve` with the demo
backend and an audit file, plain HTTP requests of the 2026-07-28 era."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2

from tests.support import RAW_HEADERS, demo_backend, running_gateway, write_config
from vmcp_opt.telemetry.audit_summaries import SUMMARY_INTERVAL

FORGED = 150  # retries with a forged state from one address
TOOL = "demo_whoami"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "rounds30", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
HEADERS = {**RAW_HEADERS, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": TOOL}


def forged_retry(client: httpx2.Client, url: str, request_id: int) -> str:
    """One retry of `TOOL` whose `requestState` the gateway never sealed; the state sent."""
    state = "forged-" + uuid.uuid4().hex * 2
    params = {"name": TOOL, "arguments": {}, "requestState": state, "inputResponses": {}, "_meta": META}
    answer = client.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
    assert answer.json()["error"]["message"] == "Invalid or expired requestState", answer.text
    return state


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_flood_of_forged_request_states_is_written_as_its_first_and_one_summary(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("demo")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    with (
        running_gateway(write_config(tmp_path, config)) as gateway,
        httpx2.Client(headers=HEADERS, timeout=30) as client,
    ):
        began = time.monotonic()
        states = [forged_retry(client, gateway.url, request_id) for request_id in range(FORGED)]
        intervals = 1 + int((time.monotonic() - began) // SUMMARY_INTERVAL)  # 1 unless the machine crawls
    # Stopped: the summary of the interval still open was written at shutdown.

    refused = [e for e in audit_events(tmp_path / "audit.log") if e["metadata"]["extra"].get("round_refused")]
    singles = [e for e in refused if "count" not in e["metadata"]["extra"]]
    summaries = [e for e in refused if "count" in e["metadata"]["extra"]]
    assert len(singles) + sum(e["metadata"]["extra"]["count"] for e in summaries) == FORGED  # every one counted
    assert 1 <= len(summaries) <= len(singles) <= intervals  # one written whole a minute, not one a request

    first = singles[0]
    assert (first["type"], first["outcome"], first["target"]["name"]) == ("mcp_tool_call", "denied", TOOL)
    assert first["metadata"]["extra"]["error_type"] == "invalid_request_state"
    assert first["metadata"]["extra"]["request_id"] == "0"  # the one written whole keeps what finds its request

    summary = summaries[0]
    extra = summary["metadata"]["extra"]
    assert (summary["type"], summary["outcome"]) == ("mcp_tool_call", "denied")
    assert extra["reasons"] == {"invalid_request_state": extra["count"]}
    assert extra["error_type"] == "invalid_request_state" and "request_id" not in extra
    assert extra["interval_start"] <= extra["interval_end"] == summary["loggedAt"]
    assert summary["source"] == first["source"] == {"type": "network", "value": "127.0.0.1"}

    written = (tmp_path / "audit.log").read_text(encoding="utf-8")
    assert not any(state in written for state in states)  # a client's state is never written
