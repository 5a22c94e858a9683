"""How a run tells telemetry about its steps: the hooks the audit log's per-step events come from.

A step's calls reach the router's watchers as operations like any call; what the router never sees is the
step itself: that it started, that its condition skipped it, how many attempts it took, how many for_each
items it ran. A watcher that wants those puts a `StepWatch` in the notes of each tools/call operation it
hears start (`STEP_WATCH_NOTE`); the provider finds it there for the workflow's own operation (the router's
current one while the run starts) and the executor reports each step to the `RunWatch` it hands out.

While a watched step runs, `STEP_CALLS` holds its `StepCalls` (each step is a task of its own, and its for_each
items are tasks under it, so the variable is the step's in all of them): a watcher that hears one of the step's
calls finish counts it there instead of writing an event per call, so a for_each of a thousand items is one
step event with its counts, not a thousand.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vmcp_opt.config.workflows import StepConfig, WorkflowConfig
    from vmcp_opt.routing.operations import Operation, Outcome
    from vmcp_opt.workflows.executor import RunReport, StepReport

STEP_WATCH_NOTE = "workflow.step_watch"  # the key of a `StepWatch` in an operation's notes
# Set by a watcher in a workflow call's notes when its run ended by the workflow's `timeout`.
TIMED_OUT_NOTE = "workflow.timed_out"


@dataclass
class StepCalls:
    """The calls one step made, as the router's watchers saw them finish (retries and items included)."""

    calls: int = 0
    backend: str | None = None  # the backend of the last call: a step's tool is served by one backend
    denied: bool = False  # a call the policy refused
    failure: Outcome | None = None  # the outcome of the last call that did not succeed and was not cancelled
    error: str | None = None  # and its error type (an exception's name, a JSON-RPC code)

    def saw(self, backend: str | None, outcome: Outcome, error: str | None) -> None:
        self.calls += 1
        self.backend = backend or self.backend
        self.denied = self.denied or outcome == "denied"
        if outcome not in ("success", "cancelled"):
            self.failure, self.error = outcome, error


STEP_CALLS: ContextVar[StepCalls | None] = ContextVar("vmcp_workflow_step_calls", default=None)


class RunWatch(Protocol):
    """One run's steps as they go; each method returns at once (an audit log queues, it does not write)."""

    def step_started(self, step: StepConfig, report: StepReport) -> None: ...

    def step_skipped(self, step: StepConfig, report: StepReport, blocked_by: str | None) -> None: ...

    def step_finished(self, step: StepConfig, report: StepReport, calls: StepCalls) -> None: ...

    def run_finished(self, report: RunReport) -> None: ...

    def run_stopped(self, error: BaseException) -> None:
        """The run raised `error` instead of reporting: it was cancelled, or a defect broke it."""


class StepWatch(Protocol):
    def workflow_run(self, operation: Operation, workflow: WorkflowConfig) -> RunWatch: ...


def run_watch(operation: Operation | None, workflow: WorkflowConfig) -> RunWatch | None:
    """The `RunWatch` of a run whose workflow call is `operation` (the router's current one), if a watcher left
    a `StepWatch` in its notes. None for any other operation: a run that is not the call's own (a background
    run of a 2026-07-28 client's, started from another request) is not watched step by step."""
    if operation is None or operation.target != workflow.name:
        return None
    watch: StepWatch | None = operation.notes.get(STEP_WATCH_NOTE)
    return watch.workflow_run(operation, workflow) if watch is not None else None
