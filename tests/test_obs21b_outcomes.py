"""What operators see of calls that did not fail: a client's cancel, a rate-limited call, a looping guest's
denials. Over real processes: `vmcp serve` with API keys, a Cedar policy, rate limits, audit to a file and
`/metrics`; the demo backend over stdio; the SDK client and plain HTTP.

- A call the client cancels is `cancelled` in the metrics and the audit log, not a failure of the gateway or
  its backend (whose error-rate alert fired when clients cancelled); one the gateway's own deadline ends
  (`call_timeout`, a workflow step's `timeout`) stays a failure.
- A call refused with 429 before it reaches the router is counted by setting and audited.
- A guest calling a forbidden tool in a loop writes one log line, while the audit log records every denial.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, policed_config, running_gateway

pytestmark = pytest.mark.anyio

POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guests", action == Action::"call_tool", resource == Tool::"notes_whoami");
"""
# One bucket for everyone, one token per 1000 s: the second call within a test is refused.
LIMITS = {"per_tool": {"notes_save_note": {"rate": 0.001, "burst": 1}}}
WORKFLOWS = [
    {
        "name": "slow_step",
        "description": "One step the workflow's own timeout ends.",
        "steps": [{"id": "s", "tool": "notes_slow_echo", "arguments": {"message": "x", "seconds": 30}, "timeout": 0.5}],
    }
]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
WAIT = 20.0  # seconds a watcher may take to record what the gateway did (it writes within 0.1 s)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Path]]:
    directory = tmp_path_factory.mktemp("obs21b")
    config = {
        # `timed`: the gateway's own deadline, 0.5 s (plus its 1 s grace), ends a slow call.
        "backends": [demo_backend("notes"), demo_backend("timed", call_timeout=0.5)],
        "rate_limits": LIMITS,
        "workflows": WORKFLOWS,
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}, "metrics": {"enabled": True}},
    }
    path, keys = policed_config(directory, {"guest": ["guests"], "staff": ["staff"]}, POLICY, config)
    with running_gateway(path) as gateway:
        yield gateway, keys, directory / "audit.log"


def client(gateway: Gateway, key: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return Client(streamable_http_client(gateway.url, http_client=http), mode=mode)  # type: ignore[arg-type]


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    """One series' value from the gateway's /metrics (0 when it has none yet)."""
    text = httpx2.get(f"{gateway.base}/metrics", timeout=30).text
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    return 0.0


def events(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []


def until(found: Callable[[], Any]) -> Any:
    """`found()` once it is truthy: what the gateway records after it answered."""
    deadline = time.monotonic() + WAIT
    while not (value := found()):
        assert time.monotonic() < deadline, "not recorded in time"
        time.sleep(0.05)
    return value


def calls(gateway: Gateway, backend: str, outcome: str) -> tuple[float, float]:
    """tools/call as the client sent it and as sent to `backend`, with this outcome, counted so far."""
    server = sample(gateway, "mcp_server_operation_duration_seconds_count", method="tools/call", outcome=outcome)
    sent = "mcp_client_operation_duration_seconds_count"
    return server, sample(gateway, sent, backend=backend, method="tools/call", outcome=outcome)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_call_the_client_cancels_is_cancelled_not_a_failure(
    served: tuple[Gateway, dict[str, str], Path], mode: str
) -> None:
    gateway, keys, audit = served
    failed, cancelled = calls(gateway, "notes", "failure"), calls(gateway, "notes", "cancelled")
    seen = len([e for e in events(audit) if e["outcome"] == "cancelled"])
    async with client(gateway, keys["staff"], mode) as staff:
        with anyio.move_on_after(0.5):  # the SDK tells the gateway (notifications/cancelled, or the POST closed)
            await staff.call_tool("notes_slow_echo", {"message": "x", "seconds": 30})
        # The session goes on: the cancel was the client's, nothing broke.
        assert not (await staff.call_tool("notes_search_notes", {"query": "x"})).is_error

    until(lambda: calls(gateway, "notes", "cancelled") == (cancelled[0] + 1, cancelled[1] + 1))
    recorded = until(lambda: [e for e in events(audit) if e["outcome"] == "cancelled"][seen:])
    assert calls(gateway, "notes", "failure") == failed
    assert [(e["type"], e["target"]["name"], e["target"]["backend"]) for e in recorded] == [
        ("mcp_tool_call", "notes_slow_echo", "notes")
    ]
    assert recorded[0]["metadata"]["extra"]["error_type"] == "cancelled"


async def test_a_call_the_gateways_own_deadline_ends_stays_a_failure_of_the_backend(
    served: tuple[Gateway, dict[str, str], Path],
) -> None:
    gateway, keys, _ = served
    failed, cancelled = calls(gateway, "timed", "failure"), calls(gateway, "timed", "cancelled")
    async with client(gateway, keys["staff"]) as staff:
        result = await staff.call_tool("timed_slow_echo", {"message": "x", "seconds": 30})
    assert result.is_error and "timed out after 0.5s (call_timeout of this backend)" in str(result.content)
    until(lambda: calls(gateway, "timed", "failure") == (failed[0] + 1, failed[1] + 1))
    assert calls(gateway, "timed", "cancelled") == cancelled


async def test_a_workflow_steps_own_timeout_is_a_failure_of_its_call_not_a_cancel(
    served: tuple[Gateway, dict[str, str], Path],
) -> None:
    gateway, keys, _ = served
    sent = "mcp_client_operation_duration_seconds_count"
    failed = sample(gateway, sent, backend="notes", method="tools/call", outcome="failure")
    cancelled = sample(gateway, sent, backend="notes", method="tools/call", outcome="cancelled")
    async with client(gateway, keys["staff"]) as staff:
        result = await staff.call_tool("slow_step", {})
    assert result.is_error and "timed out after 0.5s" in str(result.content)
    until(lambda: sample(gateway, sent, backend="notes", method="tools/call", outcome="failure") == failed + 1)
    assert sample(gateway, sent, backend="notes", method="tools/call", outcome="cancelled") == cancelled


def test_a_rate_limited_call_is_counted_by_setting_and_audited(served: tuple[Gateway, dict[str, str], Path]) -> None:
    gateway, keys, audit = served
    setting = "rate_limits.per_tool.notes_save_note"
    before = sample(gateway, "vmcp_rate_limited_total", setting=setting)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "notes_save_note", "arguments": {"title": "t", "text": "secret words"}, "_meta": meta}
    headers = {
        **HEADERS,
        "Authorization": f"Bearer {keys['staff']}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "notes_save_note",
    }
    with httpx2.Client(timeout=30) as http:  # the bucket holds one token: the first call takes it
        answers = [
            http.post(
                gateway.url, json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}, headers=headers
            )
            for n in range(2)
        ]
    assert [a.status_code for a in answers] == [200, 429], answers[-1].text

    assert sample(gateway, "vmcp_rate_limited_total", setting=setting) == before + 1
    assert sample(gateway, "vmcp_rate_limits_unchecked_total") == 0  # exported (memory buckets: never unchecked)
    [event] = until(lambda: [e for e in events(audit) if e["type"] == "vmcp_rate_limited"])
    assert event["outcome"] == "denied" and event["metadata"]["extra"]["error_type"] == setting
    assert event["target"] == {"method": "tools/call", "type": "tool", "name": "notes_save_note"}
    assert event["subjects"]["user_id"] == "staff" and event["subjects"]["caller_id"].startswith("subject:")
    assert event["source"] == {"type": "network", "value": "127.0.0.1"}
    assert "secret words" not in json.dumps(event)


async def test_a_guest_denied_in_a_loop_is_logged_once_and_audited_every_time(
    served: tuple[Gateway, dict[str, str], Path],
) -> None:
    gateway, keys, audit = served
    denied = len([e for e in events(audit) if e["outcome"] == "denied" and e["type"] == "mcp_tool_call"])
    async with client(gateway, keys["guest"]) as guest:
        for _ in range(5):
            with pytest.raises(MCPError, match=r"^Unknown tool: 'notes_whoami'$"):  # told as unknown, logged as denied
                await guest.call_tool("notes_whoami", {})
    lines = [line for line in gateway.output().splitlines() if "may not use tool 'notes_whoami'" in line]
    assert len(lines) == 1, lines
    until(
        lambda: (
            len([e for e in events(audit) if e["outcome"] == "denied" and e["type"] == "mcp_tool_call"]) == denied + 5
        )
    )


async def test_a_cancelled_span_is_no_error_and_a_deadline_passed_is_one() -> None:
    """The span status the trace backend alerts on: unset for a cancel, an error for a deadline run out."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import TracingConfig
    from vmcp_opt.routing.operations import Operation, watched
    from vmcp_opt.telemetry.tracing import Tracing

    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(enabled=True), exporter)
    caller = Caller("session:ab12", Identification.SESSION, "2025-11-25")
    with anyio.CancelScope() as scope:  # cancelled by hand, as the SDK does for notifications/cancelled
        with watched([tracing], Operation("tools/call", caller, target="a")):
            scope.cancel()
            await anyio.sleep(10)
    with anyio.move_on_after(0.01), watched([tracing], Operation("tools/call", caller, target="b")):
        await anyio.sleep(10)
    tracing.close()
    cancelled, timed_out = exporter.get_finished_spans()
    assert cancelled.attributes is not None and cancelled.attributes["vmcp.outcome"] == "cancelled"
    assert cancelled.status.status_code is StatusCode.UNSET
    assert timed_out.attributes is not None and timed_out.attributes["vmcp.outcome"] == "failure"
    assert timed_out.status.status_code is StatusCode.ERROR and timed_out.attributes["error.type"] == "TimeoutError"
