"""What the router tells its watchers about each operation: the one hook telemetry (audit, metrics, traces)
attaches to.

Every routed request (a tool call, each list, a prompt, a resource read, a completion) and every request the
router sends to a backend is an `Operation`. Watchers hear `operation_started` before it runs (a tracer opens
its span there and makes it OpenTelemetry's current context, which the MCP SDK's client sends to the backend)
and `operation_finished` after, with its outcome, duration and result. Nested operations (call_tool's target,
a workflow's steps, the backend requests of a call) know their `parent` through a context variable, so they
also work across the tasks a workflow starts. With no watcher registered the router skips all of it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.auth import Caller
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.policy import Denied
from vmcp_opt.routing.round_trips import InputRequired

# "cancelled": stopped from outside before it ended (the client's notifications/cancelled, its HTTP request gone,
# a sibling workflow step's abort), which says nothing about the gateway or the backend.
Outcome = Literal["success", "failure", "denied", "application_error", "cancelled"]
# "request": a front request as the router serves it; "backend": a request the router sends to a backend.
Kind = Literal["request", "backend"]

logger = logging.getLogger(__name__)
_current: ContextVar[Operation | None] = ContextVar("vmcp_operation", default=None)


@dataclass(eq=False)
class Operation:
    method: str  # the MCP method: tools/call, tools/list, prompts/get, resources/read, completion/complete, …
    caller: Caller
    kind: Kind = "request"
    target: str | None = None  # the tool, prompt or resource as the caller named it
    backend: str | None = None  # the backend that serves it (or the gateway's own source)
    exchange: Exchange | None = None
    parent: Operation | None = None
    arguments: Any = None  # the request's arguments (only audit with data capture on reads them)
    started: float = field(default_factory=time.perf_counter)
    duration: float = 0.0  # seconds
    outcome: Outcome = "success"
    error: str | None = None  # error.type: an exception's name or a JSON-RPC error code
    result: Any = None  # what the router returned
    # Each watcher's own state for this operation (a span), by the watcher's key.
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Operation:
        op = self
        while op.parent is not None:
            op = op.parent
        return op


class OperationWatcher(Protocol):
    def operation_started(self, op: Operation) -> None: ...

    def operation_finished(self, op: Operation) -> None: ...


def current() -> Operation | None:
    return _current.get()


@contextmanager
def watched(watchers: Sequence[OperationWatcher], op: Operation) -> Iterator[Operation]:
    """Runs the body as `op`: watchers hear it start and finish, with the outcome the body ended in."""
    op.parent = _current.get()
    deadline = _effective_deadline()
    token = _current.set(op)
    for watcher in watchers:
        watcher.operation_started(op)
    try:
        yield op
    except InputRequired:
        op.error = "input_required"  # the client is asked something first; its retry is an operation of its own
        raise
    except Denied:
        op.outcome, op.error = "denied", "denied"
        raise
    except MCPError as exc:
        op.outcome, op.error = "failure", str(exc.code)
        raise
    except _cancelled():
        op.outcome, op.error = ("failure", "TimeoutError") if _deadline_passed(deadline) else ("cancelled", "cancelled")
        raise
    except BaseException as exc:
        op.outcome, op.error = "failure", type(exc).__name__
        raise
    finally:
        _current.reset(token)
        op.duration = time.perf_counter() - op.started
        for watcher in watchers:
            try:
                watcher.operation_finished(op)
            except Exception:  # a watcher's bug must not turn a served request into a failure
                logger.exception("operation watcher %r failed", watcher)


def _cancelled() -> type[BaseException]:
    """anyio's cancellation exception; asyncio's outside an event loop (a watcher driven by plain code)."""
    try:
        return anyio.get_cancelled_exc_class()
    except RuntimeError:  # anyio's NoEventLoopError
        return asyncio.CancelledError


def _effective_deadline() -> float:
    """The earliest deadline of the cancel scopes around the operation as it starts (inf: none, or no event loop)."""
    try:
        return anyio.current_effective_deadline()
    except RuntimeError:  # anyio's NoEventLoopError: a watcher driven by plain code
        return math.inf


def _deadline_passed(deadline: float) -> bool:
    """Whether a cancellation came from one of the gateway's own deadlines (a workflow step's or run's `timeout`;
    `timeouts.call` arrives as `BackendUnavailable`, its deadline being inside the backend request) rather than from
    someone (the SDK's scope cancelled by hand for a client's notifications/cancelled or a closed request): the
    deadline in force when the operation started has passed. Decided by the clock, not by the text anyio cancels
    with, which differs between anyio versions (4.9 writes no "deadline exceeded")."""
    if math.isinf(deadline):
        return False
    try:
        return anyio.current_time() >= deadline
    except RuntimeError:
        return False


def completion_target(ref: types.PromptReference | types.ResourceTemplateReference) -> str:
    return ref.name if isinstance(ref, types.PromptReference) else ref.uri


def request_target(request: types.Request[Any, Any]) -> str | None:
    """The tool, prompt or resource a backend request names."""
    params = request.params
    for attr in ("name", "uri"):
        value = getattr(params, attr, None)
        if value is not None:
            return str(value)
    return None


Op = Operation  # the router's short name: `Operation` there is the policy's list/use/complete
