"""Telemetry on the request path, in process with its real parts (the audit writer thread and file, anyio's cancel
scopes, an ASGI client through the rate-limit gate): bounded queued audit events, one measurement per operation,
outcomes told by the clock, a telemetry failure that cannot turn a 429 into a 500, log records that keep their
fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from starlette.types import Receive, Scope, Send

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import AuditConfig
from vmcp_opt.config.limits import RateLimitsConfig
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.operations import Operation, watched
from vmcp_opt.server.rate_limit_gate import RateLimitGate
from vmcp_opt.shared.rate_limits import MemoryBuckets, RateLimiter
from vmcp_opt.telemetry import audit
from vmcp_opt.telemetry.audit import MAX_FIELD_CHARS, AuditLog
from vmcp_opt.telemetry.tracing import _Counted
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

BIG = 1_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_queued_event_holds_only_bounded_copies_of_what_the_client_chose(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "audit.log")), str(tmp_path))
    caller = Caller(
        "session:ab12",
        Identification.TOKEN,
        "2025-11-25",
        client_name="c" * BIG,
        subject="alice",
        claims={"name": "Alice", "groups": ["g"] * BIG, "act": {"sub": "agent"}},
        token="t" * BIG,
    )
    op = Operation(
        "tools/call",
        caller,
        target="n" * BIG,
        exchange=Exchange("tools/call", request_id="i" * BIG),
        outcome="failure",
        error="-32602",
    )
    slim, _ = log._queued(op)
    assert slim.target is not None and len(slim.target) < MAX_FIELD_CHARS + 40
    assert slim.exchange is not None and isinstance(slim.exchange.request_id, str)
    assert len(slim.exchange.request_id) < MAX_FIELD_CHARS + 40
    assert slim.caller.token is None and set(slim.caller.claims) == {"name", "act"}
    assert slim.caller.client_name is not None and len(slim.caller.client_name) < MAX_FIELD_CHARS + 40
    log.operation_finished(op)
    log.close()
    [event] = _events(tmp_path / "audit.log")
    # The length each marker names is the client's original, not the cut copy's.
    assert event["target"]["name"].endswith("…(1,000,000 chars)")
    assert event["metadata"]["extra"]["request_id"].endswith("…(1,000,000 chars)")
    assert event["subjects"]["client_name"].endswith("…(1,000,000 chars)")
    assert event["subjects"]["user"] == "Alice" and event["delegation"] == [{"sub": "agent"}]


def test_a_workflows_result_is_measured_once_for_both_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serialised: list[Any] = []
    original = audit.to_json

    def counting(value: Any, **kwargs: Any) -> bytes:
        serialised.append(value)
        return original(value, **kwargs)

    monkeypatch.setattr(audit, "to_json", counting)
    log = AuditLog(AuditConfig(enabled=True, include_data=True, output=str(tmp_path / "audit.log")), str(tmp_path))
    result = types.CallToolResult(content=[types.TextContent(type="text", text="x" * 10_000)])
    caller = Caller("session:ab12", Identification.SESSION, "2025-11-25")
    op = Operation("tools/call", caller, target="wf", backend=WORKFLOW_SOURCE, arguments={"a": 1}, result=result)
    log.operation_finished(op)
    log.close()
    started, completed = _events(tmp_path / "audit.log")
    assert (started["type"], completed["type"]) == ("workflow_started", "workflow_completed")
    assert completed["metadata"]["extra"]["response_size_bytes"] == len(
        original(result, by_alias=True, exclude_none=True)
    )
    assert "response" in completed["data"] and "response" not in started["data"]
    assert len(serialised) == 2  # the result and the arguments, once each: not per event, not again by the writer


class _Outcomes:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str | None]] = []

    def operation_started(self, op: Operation) -> None:
        pass

    def operation_finished(self, op: Operation) -> None:
        self.finished.append((op.outcome, op.error))


@pytest.mark.anyio
async def test_a_cancel_is_told_from_a_deadline_by_the_clock_not_by_anyios_message() -> None:
    watcher = _Outcomes()
    caller = Caller("session:ab12", Identification.SESSION, "2025-11-25")
    # Cancelled by hand, whatever its message says (anyio 4.9 writes no reason at all for a deadline).
    with anyio.CancelScope() as scope, watched([watcher], Operation("tools/call", caller, target="a")):
        scope.cancel("deadline exceeded")
        await anyio.sleep(10)
    with anyio.move_on_after(0.01), watched([watcher], Operation("tools/call", caller, target="b")):
        await anyio.sleep(10)
    assert watcher.finished == [("cancelled", "cancelled"), ("failure", "TimeoutError")]


class _Recording(SpanExporter):
    def __init__(self) -> None:
        self.shutdowns: list[dict[str, Any]] = []

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:  # type: ignore[override]
        self.shutdowns.append({"timeout_millis": timeout_millis, **kwargs})


def test_the_counting_exporter_passes_the_shutdown_timeout_on() -> None:
    inner = _Recording()
    counted = _Counted(inner)
    counted.export([ReadableSpan(name="s")])
    counted.shutdown(timeout_millis=250)
    assert counted.taken == 1 and inner.shutdowns == [{"timeout_millis": 250}]


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.anyio
async def test_a_rate_limited_call_stays_a_429_when_telemetry_of_it_fails(caplog: pytest.LogCaptureFixture) -> None:
    limits = RateLimitsConfig.model_validate({"per_tool": {"t": {"rate": 0.001, "burst": 1}}})

    def failing(caller: Caller, setting: str, tool: str) -> None:
        raise RuntimeError("the audit broke")

    gate = RateLimitGate(_ok, RateLimiter(limits, MemoryBuckets()), 1_000_000, refused=failing)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {}}}
    transport = httpx2.ASGITransport(app=gate)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
        answers = [(await client.post("/mcp", json=call)).status_code for _ in range(3)]
    assert answers == [200, 429, 429]
    failures = [r for r in caplog.records if "telemetry of a refused call failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None  # throttled, with the cause


def test_a_throttled_record_keeps_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLog(logging.getLogger("vmcp_opt.test_rev21b"), 60.0, level=logging.INFO)
    with caplog.at_level(logging.INFO, logger="vmcp_opt.test_rev21b"):
        log.warning("k", "denied: %s", "c1", extra={"caller": "c1", "subject": "alice", "target": "t"})
    [record] = caplog.records
    assert (record.caller, record.subject, record.target) == ("c1", "alice", "t")  # type: ignore[attr-defined]


def test_a_client_cannot_forge_the_cut_mark_to_keep_a_long_field() -> None:
    """A value ending in `…(N chars)` is left as it is only when `_bounded` could have made it: a short length
    that passes the bound. A client sending the mark with a million digits, or naming a length under the bound,
    gets its value cut like any other."""
    from vmcp_opt.telemetry.audit import MAX_FIELD_CHARS, _bounded

    forged = "a" * MAX_FIELD_CHARS + "…(" + "1" * 1_000_000 + " chars)"
    assert len(_bounded(forged)) < MAX_FIELD_CHARS + 40
    lying = "a" * MAX_FIELD_CHARS + "…(5 chars)"
    assert _bounded(lying).endswith(f"…({len(lying):,} chars)")
    cut = _bounded("a" * 300)
    assert _bounded(cut) == cut and cut.endswith("…(300 chars)")
