"""Health checks and circuit breakers for every backend, and the guarded path every routed call takes.

The monitor pings each backend every `health.interval`; a ping's outcome feeds both the backend's
health and its circuit breaker, and a backend that turns unhealthy while its session looks alive
(an HTTP server gone, a stdio process hung) is asked to reconnect. Real calls go through `request`,
which refuses at once while the circuit is open and feeds each call's outcome and latency back.

A call's deadline (or an answer past `slow_call`) is a verdict on the backend only when no other call to it
succeeded while it ran: the deadline is the gateway's, but how long a call runs is also its arguments' (a tool
asked to sleep, to fetch a tarpit URL), and when every such call counted, one client calling a slow tool a few
times at once opened the circuit for every caller while the others' calls were being answered. A backend whose calls all hang (its worker stuck behind a
protocol loop that still answers pings) serves no call meanwhile, so it still opens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, TypeAdapter, ValidationError

from vmcp_opt.backends import BackendConnection, BackendManager, BackendState
from vmcp_opt.backends.connection import BackendUnavailable
from vmcp_opt.backends.errors import broken_answer, invalid_result, naming_backend
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health.breaker import CircuitBreaker
from vmcp_opt.health.checker import BackendHealth, HealthState
from vmcp_opt.health.clock import CallClock
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
# `HealthMonitor.guarded`: the breaker and deadline around one call to the named backend, on any session.
Guard = Callable[[str, CallClock | None], AbstractAsyncContextManager[None]]

# Past the SDK's own read timeout, a last guard so no call can hang.
_DEADLINE_GRACE = 1.0
# What a ping that got no answer fails with.
_PING_ERRORS = (TimeoutError, MCPError, BackendUnavailable, anyio.BrokenResourceError, anyio.ClosedResourceError)


class HealthMonitor:
    def __init__(self, manager: BackendManager, config: VmcpConfig) -> None:
        self.manager = manager
        self.config = config
        self.health = {name: BackendHealth(name, config.health) for name in manager.connections}
        self.breakers = {name: CircuitBreaker(name, config.failure.circuit_breaker) for name in manager.connections}
        self._sessions_seen = {name: 0 for name in manager.connections}
        self._scope: anyio.CancelScope | None = None
        self._stopped = False  # `stop()` may come before `run()` has made its scope (a stop as the gateway starts)
        self._local_errors = ThrottledLog(logger, 60.0)  # per backend: a client can repeat such a request at will
        manager.add_listener(self._on_backend_change)

    # --- health checks ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Check every backend every `health.interval` until `stop()`."""
        if not self.config.health.enabled or self._stopped:
            return
        with anyio.CancelScope() as self._scope:
            async with anyio.create_task_group() as task_group:
                for connection in self.manager.connections.values():
                    task_group.start_soon(self._watch, connection, name=f"health:{connection.name}")

    def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, connection: BackendConnection) -> None:
        while True:
            await self.check(connection)
            await anyio.sleep(self.config.health.interval)

    async def check_all(self) -> None:
        async with anyio.create_task_group() as task_group:
            for connection in self.manager.connections.values():
                task_group.start_soon(self.check, connection)

    async def check(self, connection: BackendConnection) -> None:
        """One ping; its outcome feeds the backend's health and its circuit breaker."""
        health, breaker = self.health[connection.name], self.breakers[connection.name]
        self._note_reconnect(connection)
        if connection.first_attempt_pending:
            # Still starting (a slow first connect ends by `timeouts.connect`): unknown, not "unhealthy", which
            # on a busy machine greeted every first start with a warning per backend.
            return
        if connection.state is not BackendState.READY:
            reason = f"not connected ({connection.state.value}" + (
                f": {connection.last_error})" if connection.last_error else ")"
            )
            health.mark_down(reason)
            breaker.record_failure(reason, admitted=False)
            return
        timeout = self.config.health.timeout
        started = time.monotonic()
        try:
            # The ping answers by its deadline (a hung transport's clean-up goes on in the session's background), so
            # each failed ping is a verdict at `health.timeout`; this outer bound is a last guard.
            with anyio.fail_after(timeout + _DEADLINE_GRACE):
                await connection.ping(timeout)
        except _PING_ERRORS as exc:
            reason = _ping_failure(exc, timeout, connection)
            health.record_failure(reason)
            breaker.record_failure(reason, admitted=False)
            if health.state is HealthState.UNHEALTHY and connection.state is BackendState.READY:
                told = f"unhealthy after {health.consecutive_failures} failed pings"
                connection.reconnect(f"{told}: {reason}", told=told)
            return
        latency = time.monotonic() - started
        health.record_success(latency)
        breaker.record_success(latency, admitted=False)

    async def _on_backend_change(self, connection: BackendConnection) -> None:
        self._note_reconnect(connection)

    def _note_reconnect(self, connection: BackendConnection) -> None:
        """A new session: let trial calls test it instead of waiting out the cool-down. The first session too: a
        backend down at start-up opened its circuit through failed checks, and is ready now."""
        seen = self._sessions_seen.get(connection.name, 0)
        if connection.state is BackendState.READY and connection.sessions != seen:
            self._sessions_seen[connection.name] = connection.sessions
            self.breakers[connection.name].trial()  # no-op unless open

    # --- guarded calls ---------------------------------------------------------------------------

    async def request(
        self,
        backend: str,
        request: types.Request[Any, Any],
        result_type: type[ResultT] | TypeAdapter[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> ResultT:
        """Forward through the circuit breaker; `CircuitOpen` or `BackendUnavailable` when it cannot go."""
        connection = self._connection(backend)
        async with self.guarded(backend):
            return await connection.request(request, result_type, progress_callback=progress_callback)

    @asynccontextmanager
    async def guarded(self, backend: str, clock: CallClock | None = None) -> AsyncIterator[None]:
        """The breaker's bookkeeping and the call deadline around one call, whichever session carries it.

        Refuses at once (`CircuitOpen`) while the circuit is open. A `clock` given by the caller excludes
        the time its call spends waiting for the client from the latency and the deadline.
        """
        connection = self._connection(backend)
        breaker = self.breakers[backend]
        breaker.before_call()  # `CircuitOpen` tells the client the circuit's state, never why it opened
        entered = breaker.clock()
        clock = clock or CallClock()
        try:
            with clock.deadline(connection.call_timeout + _DEADLINE_GRACE):
                yield
        except anyio.get_cancelled_exc_class():
            breaker.release()  # cancelled by the caller: no verdict on the backend
            raise
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                _deadline_passed(breaker, entered, connection.describe(exc))
            elif exc.code == types.CONNECTION_CLOSED:  # the backend is gone, not answering "no"
                breaker.record_failure(connection.describe(exc))
            elif broken_answer(exc):  # garbled, an HTTP 5xx: the call failed because of the backend
                breaker.record_failure(connection.describe(exc))
                raise naming_backend(backend, exc) from None
            else:
                _answered(breaker, entered, clock)  # it answered (an error of its own): it is alive
            if exc.code == types.REQUEST_TIMEOUT and exc.message.endswith("timed out"):  # the SDK's read timeout
                raise MCPError(exc.code, f"{exc.message} after {_call_timeout(connection)}") from None
            raise
        except ValidationError as exc:  # the SDK's check of the result: the backend answered something invalid
            invalid = invalid_result(backend, exc, connection.secrets)
            breaker.record_failure(invalid.error.message)
            raise invalid from None
        except TimeoutError:
            _deadline_passed(breaker, entered, "no answer in time")
            raise BackendUnavailable(f"backend '{backend}' did not answer within {_call_timeout(connection)}") from None
        except (ValueError, TypeError) as exc:
            # Ours, not the backend's: the SDK's encoding of the request (nested past its 255 levels, a value JSON
            # cannot carry) or its checks of it, before anything is sent. What the backend sends back fails a call as
            # an MCPError, a ValidationError (above) or a lost connection, never so. Counted, it let any client open
            # the circuit for everyone with a request the gateway itself could not send.
            breaker.release()
            reason = connection.describe(exc)
            self._local_errors.warning(backend, "backend %s: a request failed in the gateway: %s", backend, reason)
            raise MCPError(
                types.INTERNAL_ERROR, f"the request for backend '{backend}' failed in the gateway: {reason}"
            ) from None
        except Exception as exc:
            breaker.record_failure(connection.describe(exc))
            raise
        _answered(breaker, entered, clock)

    def _connection(self, backend: str) -> BackendConnection:
        connection = self.manager.get(backend)
        if connection is None:
            raise BackendUnavailable(f"backend '{backend}' is not configured")
        return connection

    # --- views -----------------------------------------------------------------------------------

    def summary(self, backend: str) -> dict[str, Any]:
        return {"health": self.health[backend].summary(), "circuit": self.breakers[backend].summary()}

    def available(self, backend: str) -> bool:
        return self.health[backend].state is not HealthState.UNHEALTHY


def _deadline_passed(breaker: CircuitBreaker, entered: float, reason: str) -> None:
    """A call reached its deadline: the backend's failure unless another call to it succeeded since this one was
    admitted (then the backend serves, and this call's arguments made it slow: no verdict, its slot released)."""
    if breaker.call_succeeded_since(entered):
        breaker.release()
    else:
        breaker.record_failure(reason)


def _answered(breaker: CircuitBreaker, entered: float, clock: CallClock) -> None:
    """A call answered: a success, but one past `slow_call` a failure unless another call to the backend succeeded
    while it ran (as a deadline, `_deadline_passed`)."""
    breaker.record_success(clock.backend_time(), slow_counts=not breaker.call_succeeded_since(entered))


def _ping_failure(exc: Exception, timeout: float, connection: BackendConnection) -> str:
    """Why a ping failed, for the health state and the breaker."""
    if isinstance(exc, TimeoutError) or (isinstance(exc, MCPError) and exc.code == types.REQUEST_TIMEOUT):
        return f"ping timed out after {timeout:g}s"
    return f"ping failed: {connection.describe(exc)}"


def _call_timeout(connection: BackendConnection) -> str:
    """The call deadline and the setting it comes from, for a timeout's message."""
    setting = "call_timeout of this backend" if connection.config.call_timeout is not None else "timeouts.call"
    return f"{connection.call_timeout:g}s ({setting})"
