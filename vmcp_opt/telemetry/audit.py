"""The audit log: one JSON object per line per MCP operation, written off the request path.

Field names follow ToolHive's audit event (pkg/audit/event.go) where they mean the same, so a pipeline
that parses ToolHive's parses ours:

    {"metadata": {"auditId": "<uuid4>", "extra": {"duration_ms": 1.2, "response_size_bytes": 345,
                  "error_type": "...", "protocol_version": "...", "request_id": "..."}},
     "type": "mcp_tool_call", "loggedAt": "2026-…Z",
     "outcome": "success|failure|denied|application_error|cancelled|input_required",
     "source": {"type": "network|local", "value": "<address>"},
     "subjects": {"user_id": "<sub>", "user": "<name>", "client_name": …, "client_version": …,
                  "caller_id": "<caller id>", "identified_by": "token|api_key|session|…"},
     "delegation": [{"sub": …}, …],            # the token's `act` chain, when it was exchanged
     "component": "vmcp-opt",
     "target": {"method": "tools/call", "type": "tool", "name": "<tool>", "backend": "<backend>"},
     "data": {"request": …, "response": …}}   # only with `include_data`

The request path measures the result (its compact JSON's size, a few microseconds) and queues a copy of the
operation that holds no more than the event needs (bounded, `queue_size`); a writer thread wakes at most once
per `flush_interval`, then formats and writes what gathered. The copy drops the result, the arguments, the
request's exchange and the parent: a queue of 10,000 operations that each held a backend's megabyte answer
held gigabytes whenever the output stalled (an unread stdout pipe, a slow disk). With `include_data` the
arguments and result stay with the event, up to `max_queued_data_bytes` for all waiting events together;
past it an event is queued without them (marked `data_dropped`). When the queue is full the event
is dropped (`when_full: drop`) or waits at most `block_timeout` before it is dropped (`block`). That wait is on
the event loop, so it holds every session, not only the request: once a wait has run out the writer counts as
stalled (a hung disk, an unread stdout pipe), and events are dropped at once until it takes from the queue
again, so a stalled writer costs the gateway one `block_timeout`, not one per event. Drops and write failures
are counted (`dropped`, `write_failures`, exported as metrics) and logged, at most once per `REPORT_EVERY`
seconds.

A client chooses some of what an event holds (the tool, prompt or resource name it asks for, its
`clientInfo`, its request id): each such string is cut to `MAX_FIELD_CHARS` with a marker giving its length,
so one request cannot write megabytes into every event of its session. Lines are UTF-8 (`ensure_ascii=False`:
no six-byte escape per character), written one by one so that the file is rotated before a line would pass
`max_file_bytes`; a line longer than that on its own loses its `data`, then everything a client chose.
A write that fails (disk full) leaves no part of its lines in the file and nothing buffered to come later:
the file holds whole lines only, and `write_failures` counts exactly the events that are not in it.

Refusals anyone can send at request rate (`vmcp_auth_denied`, `vmcp_rate_limited`, `vmcp_session_refused`, and a
retry refused for its `requestState`) are
written once per source and interval, the rest as one summary event with a `count` (audit_summaries.py): a
client without a credential cannot rotate the callers' events out of the kept files.

`input_required`: a 2026-07-28 client's request answered with an `InputRequiredResult`; the call goes on with its
retry, a request of its own with the call's outcome. A workflow run's events are run_audit.py's (they share
`AuditLog`'s private `_offer`/`_wanted`); the file the lines go to is audit_sink.py.

Past ~500 lines: the queue, the writer thread and the event shapes share the measured-first discipline;
the workflow runs' events, value shortening and the refusals' table are already split out (run_audit.py,
audit_values.py, audit_summaries.py).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from pydantic_core import to_json, to_jsonable_python

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import AuditConfig
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.operations import Operation
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.telemetry.audit_sink import Sink
from vmcp_opt.telemetry.audit_summaries import RefusalSummaries, Window, refusal_source
from vmcp_opt.telemetry.audit_values import MAX_FIELD_CHARS as MAX_FIELD_CHARS  # its home before audit_values.py
from vmcp_opt.telemetry.audit_values import bounded as _bounded
from vmcp_opt.telemetry.names import event_outcome, event_type, refused_retry, target_type
from vmcp_opt.telemetry.redact import masked_target, redacted_within
from vmcp_opt.telemetry.run_audit import FIELDS_NOTE, RUN_NOTE, RunAudit, ends_a_run, refused_round
from vmcp_opt.workflows.step_events import STEP_CALLS, STEP_WATCH_NOTE

if TYPE_CHECKING:
    from vmcp_opt.config.workflows import WorkflowConfig

logger = logging.getLogger(__name__)
REPORT_EVERY = 10.0  # seconds between two reports of dropped events or failed writes
_STOP = object()
# What a queued event carries: its type, time, the slimmed operation and the bytes of `data` it holds (None:
# written without `data`).
_Item = tuple[str, float, Operation, int | None]
_SIZE_NOTE = "audit.size"  # a queued operation's note: its result's size, measured on the request path
_ARGUMENTS_SIZE_NOTE = "audit.arguments_size"  # with `include_data`: its arguments' size, measured there too
_WORKFLOW_ENDS = frozenset({"workflow_completed", "workflow_failed", "workflow_timed_out"})
_STEP_CALL_EVENTS = frozenset({"workflow_step_completed", "workflow_step_failed"})  # a step's call, by its parent
_STEP_EVENTS = frozenset({"workflow_step_started", "workflow_step_skipped", *_STEP_CALL_EVENTS})
_NO_RESPONSE = frozenset({"workflow_started", "workflow_step_started", "workflow_step_skipped"})


class AuditLog:
    """An `OperationWatcher` that writes audit events; `close()` drains the queue."""

    def __init__(self, config: AuditConfig, base_dir: str = ".") -> None:
        self.config = config
        self.include = frozenset(config.include)
        self.exclude = frozenset(config.exclude)
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.waits_run_out = 0  # `block` waits that ran out: each held the event loop `block_timeout`
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._data_bytes = 0  # bytes of arguments and results the waiting events hold (`include_data`)
        self._data_lock = threading.Lock()  # taken on the request path and by the writer
        self._sink = Sink(config, base_dir)
        self._last_report = 0.0
        self._stalled = False  # a `block` wait ran out; cleared when the writer takes from the queue again
        self._closing = threading.Event()
        self.open_runs: set[RunAudit] = set()  # runs whose report is their end, not yet ended (run_audit.py)
        self.refusals = RefusalSummaries()  # refusals after a source's first, counted (audit_summaries.py)
        self._thread = threading.Thread(target=self._run, name="vmcp-audit", daemon=True)
        self._thread.start()

    # --- the request path --------------------------------------------------------------------------

    def operation_started(self, op: Operation) -> None:
        """A tool call may turn out to be a workflow's (its source is known only after lookup): the provider
        finds this log in its notes and asks it for the run's `RunWatch` (`workflow_run`)."""
        if op.kind == "request" and op.method == "tools/call":
            op.notes[STEP_WATCH_NOTE] = self

    def workflow_run(self, op: Operation, workflow: WorkflowConfig) -> RunAudit:
        """The `StepWatch` of workflows/step_events.py: writes `workflow_started` now and each step as it goes."""
        return RunAudit(self, op, workflow)

    def operation_finished(self, op: Operation) -> None:
        if op.kind != "request":
            return  # backend requests are the `target.backend` of their front operation
        kind = event_type(op)
        calls = STEP_CALLS.get()
        if calls is not None and kind in _STEP_CALL_EVENTS:  # a watched step's call: counted in its step's event
            calls.saw(op.backend, op.outcome, op.error)
            return
        if kind in _WORKFLOW_ENDS and not ends_a_run(op):
            if not refused_retry(op):
                return  # a question for the client, or a retry's answer: the run writes its own end (run_audit.py)
            kind = refused_round(op)  # no run of it ends: the call's own event, not a second end of the run
        started = kind in _WORKFLOW_ENDS and RUN_NOTE not in op.notes  # a run that was not watched
        kinds = ["workflow_started", kind] if started else [kind]
        kinds = [each for each in kinds if self._wanted(each)]
        if not kinds:
            return
        # Measured once for the operation (~4 ms a megabyte, on the request path): a workflow's two events and,
        # with `include_data`, the writer use these sizes rather than serialising the result again.
        size = _measured(op.result)
        weight = size + _measured(op.arguments) if self.config.include_data else None
        now = time.time()
        for each in kinds:
            self._offer(each, op, now - op.duration if each == "workflow_started" else now, size, weight)

    def measured(self, value: Any) -> int:
        """`value`'s size as the request path measures it, for a run's events (run_audit.py)."""
        return _measured(value)

    def _wanted(self, kind: str) -> bool:
        return not ((self.include and kind not in self.include) or kind in self.exclude)

    def _queued(
        self, op: Operation, size: int | None = None, weight: int | None = None
    ) -> tuple[Operation, int | None]:
        """What the queue holds of `op`: a copy without the parts an event does not need, each string a client
        chose already cut to `MAX_FIELD_CHARS`, the result's `size` (measured now when not given) in place of the
        result unless `include_data` keeps it within `max_queued_data_bytes`; and the bytes of data kept (None:
        none, the event is written without `data`). `weight`: the bytes of result and arguments together."""
        if size is None:
            size = _measured(op.result)
        kept: int | None = None
        if self.config.include_data:
            if weight is None:
                weight = size + _measured(op.arguments)
            with self._data_lock:
                if self._data_bytes + weight <= self.config.max_queued_data_bytes:
                    self._data_bytes += weight
                    kept = weight
        request_id = op.exchange.request_id if op.exchange is not None else None
        if isinstance(request_id, str):
            request_id = _bounded(request_id)
        slim = Operation(
            op.method,
            _slim_caller(op.caller),
            kind=op.kind,
            target=_bounded(op.target),
            backend=op.backend,
            exchange=Exchange(op.method, request_id=request_id) if request_id is not None else None,
            arguments=op.arguments if kept is not None else None,
            started=op.started,
            duration=op.duration,
            outcome=op.outcome,
            error=_bounded(op.error),
            result=op.result if kept is not None else _Measured(size),
        )
        slim.notes[_SIZE_NOTE] = size
        if kept is not None and weight is not None and weight >= size:
            slim.notes[_ARGUMENTS_SIZE_NOTE] = weight - size
        if FIELDS_NOTE in op.notes:
            slim.notes[FIELDS_NOTE] = op.notes[FIELDS_NOTE]
        return slim, kept

    def _release(self, kept: int | None) -> None:
        if kept is not None:
            with self._data_lock:
                self._data_bytes -= kept

    def auth_denied(self, reason: str, address: str | None) -> None:
        """An HTTP request refused by authentication, before any MCP operation: `vmcp_auth_denied`, outcome
        `denied`, the RFC 6750 error as `error_type` (`missing` when no credential came), never the credential."""
        caller = Caller("unauthenticated", Identification.ANONYMOUS, "", address=address)
        op = Operation("authenticate", caller, outcome="denied", error=reason)
        self._refused("vmcp_auth_denied", op)

    def rate_limited(self, caller: Caller, setting: str, tool: str, method: str = "tools/call") -> None:
        """A tool call (or a forwarded `method`: resources/read, prompts/get...) refused by a rate limit, before the router (HTTP 429) or by it (stdio, inner calls):
        `vmcp_rate_limited`, outcome `denied`, the setting whose bucket was empty as `error_type`, the caller as the
        refuser knows it (at the HTTP gate its id is the budget's key: `subject:<digest>` or `address:<ip>`);
        never the arguments."""
        op = Operation(method, caller, target=tool, outcome="denied", error=setting)
        self._refused("vmcp_rate_limited", op)

    def session_refused(self, caller: Caller, reason: str, session: str | None) -> None:
        """An HTTP request refused before a session served it: `vmcp_session_refused`, outcome `denied`, the reason
        as `error_type` ("session_owner": it named a session another principal opened; or the session limit's
        setting), the caller as `refused_caller` (server/admission.py) knows it, and as `target.name` the session
        it named by its caller id (a digest: the session id is its owner's bearer secret)."""
        op = Operation("session", caller, target=session, outcome="denied", error=reason)
        self._refused("vmcp_session_refused", op)

    def _refused(self, kind: str, op: Operation) -> None:
        """A refusal anyone may send at request rate: written if it is its source's first of the interval, else
        counted for its summary (audit_summaries.py)."""
        if not self._wanted(kind):
            return
        slim = _slim_refusal(op)
        if self.refusals.admit(kind, refusal_source(op.caller), slim, slim.error or ""):
            self._offer(kind, slim, time.time())

    def _offer(self, kind: str, op: Operation, at: float, size: int | None = None, weight: int | None = None) -> None:
        if not self._wanted(kind):
            return
        slim, kept = self._queued(op, size, weight)
        item: _Item = (kind, at, slim, kept)
        try:
            if self.config.when_full == "block" and not self._stalled:
                self._wait_for_room(item)
            else:
                self._queue.put_nowait(item)
        except queue.Full:
            self._release(kept)
            self.dropped += 1
            self._report(f"audit queue full ({self.config.queue_size}): {self.dropped} events dropped so far")

    def _wait_for_room(self, item: object) -> None:
        try:
            self._queue.put(item, timeout=self.config.block_timeout)
        except queue.Full:
            self.waits_run_out += 1
            self._stalled = True  # no more waits until the writer takes again: each one stops the event loop
            raise

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:  # woken when a refusals' interval ends, for its summary
                item = self._queue.get(timeout=self.refusals.wait())
            except queue.Empty:
                self._write(self._summary_lines(self.refusals.ended()))
                continue
            self._stalled = False  # the writer moves: a `block` offer may wait for room again
            # Gather for a moment: one wake-up and one write per batch, rather than formatting in between the
            # requests of a busy loop (the GIL is shared). No wait with a backlog; `close()` cuts it short.
            if self._queue.empty():
                self._closing.wait(self.config.flush_interval)
            batch = [item]
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = self._summary_lines(self.refusals.ended())
            stop = False
            for entry in batch:
                if entry is _STOP:
                    stop = True
                    continue
                kind, at, op, kept = cast(_Item, entry)
                try:
                    lines.append(self.line(kind, at, op, data=kept is not None))
                except Exception as exc:  # an unserialisable result must not stop the log
                    self.write_failures += 1
                    self._report(f"audit event not formatted: {exc!r}")
                finally:
                    self._release(kept)
            if stop:
                lines += self._summary_lines(self.refusals.drain())  # no count is lost at shutdown
            if lines:
                self._write(lines)
            if stop:
                return

    def _summary_lines(self, windows: list[Window]) -> list[bytes]:
        lines: list[bytes] = []
        for window in windows:
            try:
                lines.append(self.summary_line(window))
            except Exception as exc:  # as for an event: the log goes on
                self.write_failures += 1
                self._report(f"audit summary not formatted: {exc!r}")
        return lines

    def summary_line(self, window: Window) -> bytes:
        """A window's refusals after its first as one event of their type: the first's subjects, source and
        `error_type` (none for `other_sources`), the target's method and type, and the counts in `metadata.extra`
        (audit_summaries.py)."""
        fields = window.fields()
        event = self.event(window.kind, cast(float, fields["interval_end"]), window.op, data=False)
        extra = event["metadata"]["extra"]
        for key in ("data_dropped", "duration_ms", "response_size_bytes", "request_id"):
            extra.pop(key, None)
        extra |= fields
        extra["interval_start"] = _iso(window.started_at)
        extra["interval_end"] = event["loggedAt"]
        # The tool or session each refusal named differs: `reasons` tells them apart where a setting names a tool.
        event["target"] = {key: value for key, value in event["target"].items() if key in ("method", "type")}
        if window.other_sources:  # from many sources, for many reasons: `reasons` counts them
            extra.pop("error_type", None)
            event["source"] = {"type": "network", "value": ""}
            event["subjects"] = {}
        return _encoded(event)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        before = self._sink.lines
        try:
            self._sink.write(lines)
            self.written += len(lines)
        except OSError as exc:
            done = self._sink.lines - before  # a batch rotated midway may have written its first part
            self.written += done
            self.write_failures += len(lines) - done
            self._report(f"audit log not written ({exc}): {self.write_failures} events lost so far")

    def line(self, kind: str, at: float, op: Operation, *, data: bool = True) -> bytes:
        """The event as one UTF-8 line of at most `max_file_bytes`: a longer one loses its `data` first, then
        is cut to what the gateway itself chose (type, outcome, time, id), marked `record_truncated`."""
        event = self.event(kind, at, op, data=data)
        encoded = _encoded(event)
        if len(encoded) <= self._sink.max_bytes:
            return encoded
        event.pop("data", None)
        event["metadata"]["extra"]["record_truncated"] = len(encoded)
        shorter = _encoded(event)
        if len(shorter) <= self._sink.max_bytes:
            return shorter
        summary = {key: event[key] for key in ("type", "loggedAt", "outcome", "component")}
        summary["metadata"] = {"auditId": event["metadata"]["auditId"], "extra": {"record_truncated": len(encoded)}}
        return _encoded(summary)

    def event(self, kind: str, at: float, op: Operation, *, data: bool = True) -> dict[str, Any]:
        caller = op.caller
        user = _user(caller.claims) or caller.subject or "anonymous"
        subjects = {"user_id": _bounded(caller.subject), "user": _bounded(user)}
        subjects |= {"client_name": _bounded(caller.client_name), "client_version": _bounded(caller.client_version)}
        subjects |= {"caller_id": _bounded(caller.id), "identified_by": caller.identified_by.value}
        extra: dict[str, Any] = {
            "duration_ms": round(op.duration * 1000, 3),
            "protocol_version": _bounded(caller.protocol_version),
        }
        if kind not in _NO_RESPONSE:
            measured = op.notes.get(_SIZE_NOTE)
            extra["response_size_bytes"] = measured if isinstance(measured, int) else _size(op.result)
        if op.error is not None:
            extra["error_type"] = _bounded(op.error)
        if op.exchange is not None and op.exchange.request_id is not None:
            extra["request_id"] = _bounded(str(op.exchange.request_id))
        address = _bounded(caller.address)
        target = _target(op)
        fields = op.notes.get(FIELDS_NOTE)
        if fields is not None:
            target |= fields["target"]
            extra |= fields["extra"]
        event: dict[str, Any] = {
            "metadata": {"auditId": str(uuid.uuid4()), "extra": extra},
            "type": kind,
            "loggedAt": _iso(at),
            "source": {"type": "network" if address else "local", "value": address or ""},
            "outcome": "success" if kind == "workflow_started" else event_outcome(op),
            "subjects": {k: v for k, v in subjects.items() if v is not None},
            "component": "vmcp-opt",
            "target": target,
        }
        act = caller.claims.get("act")
        if isinstance(act, dict):
            event["delegation"] = _chain(act)
        if kind in _STEP_EVENTS and fields is not None:
            pass  # a step's own event: its arguments and output are the calls', and the workflow's result
        elif self.config.include_data and not data:
            extra["data_dropped"] = "max_queued_data_bytes"  # the waiting events held that much already
        elif self.config.include_data:
            cap = self.config.max_data_bytes
            parts: dict[str, Any] = {"request": _capped(op.arguments, cap, op.notes.get(_ARGUMENTS_SIZE_NOTE))}
            if kind not in _NO_RESPONSE:
                response = to_jsonable_python(op.result, by_alias=True)
                parts["response"] = _capped(response, cap, extra["response_size_bytes"])
            event["data"] = parts
        return event

    def _report(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            logger.error(message)

    def close(self, timeout: float = 5.0) -> None:
        for run in list(self.open_runs):
            run.log_closing()
        self._closing.set()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            self._report("audit queue still full at shutdown: events lost")
        self._thread.join(timeout)
        self._sink.close()


def _target(op: Operation) -> dict[str, str]:
    target = {"method": _bounded(op.method), "type": target_type(op.method)}
    if op.target is not None:
        target["name"] = _shown_target(op.target)
    if op.backend is not None and op.backend != GATEWAY_SOURCE:
        target["backend"] = op.backend
    return target


def _shown_target(name: str) -> str:
    """A target as its event shows it: cut (a client chose it), its URL's credentials masked (a resource URI's
    `?access_token=`, `user:password@`) even without `include_data`. The mark `bounded` puts at a cut is kept as
    it is, so an event queued already cut names the original length."""
    kept = _bounded(name)
    shown, mark = kept[:MAX_FIELD_CHARS], kept[MAX_FIELD_CHARS:]
    return masked_target(shown, cut=bool(mark)) + mark


def _user(claims: Any) -> str | None:
    for key in ("name", "preferred_username", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _chain(act: dict[str, Any]) -> list[dict[str, str]]:
    chain: list[dict[str, str]] = []
    while isinstance(act, dict) and len(chain) < 10:
        chain.append({k: _bounded(str(v)) for k, v in act.items() if k in ("sub", "client_id", "iss")})
        act = act.get("act")  # type: ignore[assignment]
    return chain


# The claims an event reads (`_user`, `delegation`): a queued event keeps these of the caller's, no more.
_EVENT_CLAIMS = ("name", "preferred_username", "email", "act")


def _slim_caller(caller: Caller) -> Caller:
    """The caller as a queued event needs it: what `event` writes, each string a client chose cut already; not its
    capabilities, token, lifetime nor the rest of its claims (a session's, held by every event it queued)."""
    claims = {key: caller.claims[key] for key in _EVENT_CLAIMS if key in caller.claims}
    return Caller(
        _bounded(caller.id),
        caller.identified_by,
        _bounded(caller.protocol_version),
        client_name=_bounded(caller.client_name),
        client_version=_bounded(caller.client_version),
        subject=_bounded(caller.subject),
        claims={key: _bounded(value) if isinstance(value, str) else value for key, value in claims.items()},
        address=_bounded(caller.address),
    )


def _slim_refusal(op: Operation) -> Operation:
    """A refusal as a queued event or a summary's first needs it: its caller slimmed, each string a client chose cut."""
    return Operation(
        op.method,
        _slim_caller(op.caller),
        target=_bounded(op.target),
        outcome=op.outcome,
        error=_bounded(op.error),
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encoded(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":"), default=str, ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace"
    )


class _Measured(NamedTuple):
    """A result the request path measured and let go: the event needs only its size."""

    size: int


def _size(result: Any) -> int:
    """Bytes of the result's compact JSON (UTF-8), serialised by pydantic-core: several times faster than
    json.dumps of its jsonable form (~5 µs for a small tool result, ~4 ms a megabyte)."""
    if result is None:
        return 0
    if isinstance(result, _Measured):
        return result.size
    return len(to_json(result, by_alias=True, exclude_none=True, fallback=str))


def _measured(value: Any) -> int:
    """`_size` on the request path: a value that cannot be serialised (even with `fallback=str`) counts 0 rather
    than failing the request's watchers; its event is still written."""
    try:
        return _size(value)
    except Exception:
        return 0


def _capped(value: Any, cap: int, size: int | None) -> Any:
    """`value` redacted; or, when its JSON passes `cap` characters, the first `cap` of them, redacted, and `bytes`:
    the size of its whole compact JSON, as the request path measured it. Only what is kept is redacted (a
    multi-megabyte argument held the GIL on this thread for ~0.6 s to write 4 KB of it)."""
    kept = redacted_within(value, cap)
    text = json.dumps(kept.value, default=str)
    if kept.whole and len(text) <= cap:
        return kept.value
    return {"truncated": True, "bytes": size if size is not None else _measured(value), "prefix": text[:cap]}
