"""A workflow run's audit events: `workflow_started`, its steps as they go, and one end.

The end is usually the run's call's own event, written by the log when the call finishes (it covers a run the
client cancelled too). Not for a 2026-07-28 client whose workflow asks its user: its call is answered with an
`InputRequiredResult` while the run goes on in the background (workflows/rounds.py), and each retry of the call
hands an answer over or collects the result. None of those answers is the run's end: the question is not
(the run goes on), and neither is a retry's (it continues a run; written as the run's end it was a second
`workflow_started` and end without the run's id). The end is then written from the run's report as it finishes,
as its call's would have been had the call waited: same type, outcome, response size and data, its duration
from the first call; a run cancelled there (its client did not come back, gave up on a retry, the gateway stopped)
ends `cancelled`. Either way a run writes one `workflow_started` and one end, all with its `workflow_id`.

A retry refused before its round went on (the run gone, already continued, its `requestState` expired or forged:
`round_refused`, `refused_round`) ends no run: it is written as the tool call it is, marked `round_refused`. One
refused at the `requestState` boundary is summarised per source and minute, as the other refusals anyone can send.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from vmcp_opt.auth import Caller
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.operations import Operation, Outcome
from vmcp_opt.telemetry.audit_summaries import refusal_source
from vmcp_opt.telemetry.audit_values import bounded
from vmcp_opt.telemetry.names import asked_input, continues_run, event_type
from vmcp_opt.telemetry.redact import redacted
from vmcp_opt.workflows.provider import run_result
from vmcp_opt.workflows.step_events import TIMED_OUT_NOTE, StepCalls

if TYPE_CHECKING:
    from vmcp_opt.config.workflows import StepConfig, WorkflowConfig
    from vmcp_opt.telemetry.audit import AuditLog
    from vmcp_opt.workflows.executor import RunReport, StepReport

# An operation's note: fields its event adds, {"target": {...}, "extra": {...}} (a workflow's run id, a step's id
# and attempts).
FIELDS_NOTE = "audit.fields"
RUN_NOTE = "audit.workflow_run"  # a workflow call's note: the `RunAudit` of the run it started
# The error type of a retry whose `requestState` did not verify: the SDK's reason on the wire, whatever it was.
INVALID_STATE = "invalid_request_state"


class RunAudit:
    """One workflow run's events, as a `RunWatch` (workflows/step_events.py): `workflow_started` when it starts,
    then per step `workflow_step_started` and `workflow_step_completed` or `workflow_step_failed` (with its
    attempts, retries, duration, and a for_each's item counts), or `workflow_step_skipped`. Never an event per
    call or per item: a run writes at most two events per configured step. Each carries the run's
    `workflow_id` (as ToolHive's), so the events of runs that overlap can be told apart."""

    def __init__(self, log: AuditLog, op: Operation, workflow: WorkflowConfig) -> None:
        self._log, self._op = log, op
        self._run = {"workflow_id": str(uuid.uuid4()), "workflow_name": workflow.name}
        extra = {"step_count": len(workflow.steps), "timeout_ms": round(workflow.timeout * 1000)}
        op.notes[FIELDS_NOTE] = {"target": self._run, "extra": extra}  # its started and ending events
        op.notes[RUN_NOTE] = self
        self._ends_with_report = False  # its call was answered with a question: the run's report is its end
        log._offer("workflow_started", op, time.time())

    def step_started(self, step: StepConfig, report: StepReport) -> None:
        self._step("workflow_step_started", step, {})

    def step_skipped(self, step: StepConfig, report: StepReport, blocked_by: str | None) -> None:
        # Why: the step it waited for failed, or its condition (the workflow author's template, cut and
        # redacted as any string) was false.
        reason = {"blocked_by": blocked_by} if blocked_by else {"condition": bounded(str(redacted(step.condition)))}
        self._step("workflow_step_skipped", step, reason)

    def step_finished(self, step: StepConfig, report: StepReport, calls: StepCalls) -> None:
        kind = "workflow_step_completed" if report.status == "ok" else "workflow_step_failed"
        if not self._log._wanted(kind):
            return
        extra: dict[str, Any] = {"attempts": report.attempts, "retry_count": report.retries, "calls": calls.calls}
        if report.items is not None:
            extra |= {"items": report.items, "items_done": report.items_done}
        outcome, error = step_outcome(report, calls)
        size = self._log.measured(report.output) if report.status == "ok" else 0
        self._step(kind, step, extra, outcome, error, calls.backend, report.duration, size)

    def run_finished(self, report: RunReport) -> None:
        if report.timed_out:  # names.event_type: `workflow_timed_out` rather than `workflow_failed`
            self._op.notes[TIMED_OUT_NOTE] = True
        if self._ends_with_report:
            self._end(report)

    def run_stopped(self, error: BaseException) -> None:
        """It raised instead of reporting. Its call's event is its end (`watched` gives it the same outcome), unless
        the call was answered with a question: then the run was cancelled in the background (its client did not come
        back within `timeouts.input`, gave up on a retry, or the gateway stopped), or a defect broke it."""
        if self._ends_with_report:
            if isinstance(error, anyio.get_cancelled_exc_class()):
                self._write_end("cancelled", None, "cancelled")
            else:
                self._write_end("failure", None, type(error).__name__)

    def asked(self) -> None:
        """Its call was answered with the run's question: the run goes on, and its report will be its end."""
        self._ends_with_report = True
        self._log.open_runs.add(self)

    def log_closing(self) -> None:
        """The log closes while the run goes on (stuck past the gateway's wait for the runs its stop cancelled): it
        ends `cancelled` now, with the process; whatever it reports later is not written."""
        if self._ends_with_report:
            self._write_end("cancelled", None, "cancelled")

    def _end(self, report: RunReport) -> None:
        """The end its call's event would have been, had the call waited for the run."""
        result = run_result(report)
        self._write_end("application_error" if result.is_error else "success", result)

    def _write_end(self, outcome: Outcome, result: Any, error: str | None = None) -> None:
        self._ends_with_report = False  # one end
        self._log.open_runs.discard(self)
        call = self._op
        end = Operation(
            call.method, call.caller, target=call.target, backend=call.backend, exchange=call.exchange,
            arguments=call.arguments, started=call.started, duration=time.perf_counter() - call.started,
            outcome=outcome, error=error, result=result,
        )  # fmt: skip
        end.notes = {key: call.notes[key] for key in (FIELDS_NOTE, TIMED_OUT_NOTE) if key in call.notes}
        size = self._log.measured(result)  # once, as the call's own end: the writer reuses it
        weight = size + self._log.measured(call.arguments) if self._log.config.include_data else None
        self._log._offer(event_type(end), end, time.time(), size, weight)

    def _step(
        self,
        kind: str,
        step: StepConfig,
        extra: dict[str, Any],
        outcome: Outcome = "success",
        error: str | None = None,
        backend: str | None = None,
        duration: float = 0.0,
        size: int = 0,
    ) -> None:
        if not self._log._wanted(kind):
            return
        workflow = self._op
        op = Operation(
            "tools/call", workflow.caller, target=step.tool, backend=backend, exchange=workflow.exchange,
            duration=duration, outcome=outcome, error=error,
        )  # fmt: skip
        target = {**self._run, "type": "workflow_step", "step_id": step.id, "step_type": step.type}
        op.notes[FIELDS_NOTE] = {"target": target, "extra": extra}
        self._log._offer(kind, op, time.time(), size, 0)


def ends_a_run(call: Operation) -> bool:
    """Whether a workflow call's answer is a run's end: not a question for its client (a run it started goes on,
    its report will be the end; a call asked to approve has not started one), nor a 2026-07-28 retry's answer
    (the run it continues writes its own end, on the replica holding it)."""
    if continues_run(call):
        return False
    if not asked_input(call):
        return True
    run = call.notes.get(RUN_NOTE)
    if isinstance(run, RunAudit):
        run.asked()
    return False


def round_refused(log: AuditLog, caller: Caller, method: str, target: str | None, request_id: str | int | None) -> None:
    """A 2026-07-28 retry whose `requestState` the boundary refused before any handler (expired, forged, another
    caller's): the request's own event type, outcome `denied`, `error_type` `invalid_request_state`, marked
    `round_refused`; never the state.

    A client's bad input refused before any work, which it may send at request rate (a forged state costs
    nothing): summarised as the other refusals are (audit_summaries.py). Its source's first of the interval is
    written whole, with its request id and target, for whoever looks into a real refused round; the rest are
    counted into one summary event of the same type, also marked `round_refused`."""
    exchange = Exchange(method, request_id=request_id) if request_id is not None else None
    op = Operation(method, caller, target=target, exchange=exchange, outcome="denied", error=INVALID_STATE)
    kind = refused_round(op)
    if not log._wanted(kind):
        return
    # What the summary needs of the first, held until its interval ends: no result nor arguments, so no data
    # bytes reserved; a caller without its token or claims.
    first, _ = log._queued(op, 0, 0)
    if log.refusals.admit(kind, refusal_source(caller), first, INVALID_STATE):
        log._offer(kind, op, time.time())


def refused_round(call: Operation) -> str:
    """The event type of a 2026-07-28 retry refused before its round went on (a workflow run's, names.py
    `refused_retry`; any round's at the `requestState` boundary): a workflow's as a tool call, since no run ended
    with it. Its event is marked `round_refused`."""
    call.notes[FIELDS_NOTE] = {"target": {}, "extra": {"round_refused": True}}
    kind = event_type(call)
    return "mcp_tool_call" if kind.startswith("workflow_") else kind


def step_outcome(report: StepReport, calls: StepCalls) -> tuple[Outcome, str | None]:
    """A finished step's outcome and error type, in the words of a call's: its reason is left out (it may hold
    argument values and a backend's text, which the log holds only with `include_data`)."""
    if report.status == "ok":
        return "success", None
    if calls.denied:
        return "denied", "denied"
    if calls.failure is not None:  # a call the run's `timeout` cut is a failure (TimeoutError), as the call's own
        return calls.failure, calls.error
    if report.status == "cancelled":  # another step's abort, the client; or the timeout between two attempts
        return "cancelled", "cancelled"
    return "failure", "step_error"  # no call failed: a template, a budget, an answer refused the step
