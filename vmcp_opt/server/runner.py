"""Run the gateway as a process: HTTP under uvicorn or stdio, until a signal; backends stopped on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import anyio
import uvicorn

from vmcp_opt.auth.authenticators import AuthSetupError
from vmcp_opt.backends.secrets import LEARNT, SecretFilter, secret_values
from vmcp_opt.config import VmcpConfig
from vmcp_opt.config.backend_auth import env_secret
from vmcp_opt.gateway import Gateway, StartupError
from vmcp_opt.optimizer.model_registry import ModelError
from vmcp_opt.routing.policy import PolicyLoadError
from vmcp_opt.server.connections import throttle_accept_errors
from vmcp_opt.server.diagnostics import DiagnosticsServer, ListenError
from vmcp_opt.server.drain import Drain, end_streams
from vmcp_opt.server.http import create_app, diagnostics_listener
from vmcp_opt.server.stdio import serve_stdio
from vmcp_opt.server.uvicorn_config import listener_settings
from vmcp_opt.shared.secrets import SecretMissing
from vmcp_opt.telemetry.audit_sink import AuditOutputError

logger = logging.getLogger(__name__)

# Over stdio, for the answers to the calls a stop cut off to be written, after which what still runs is cancelled.
ANSWER_SECONDS = 2.0
# Signals that drain before the stop (HTTP); SIGINT, or a second signal, stops at once.
DRAINING_SIGNALS = frozenset({signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])})


def run_gateway(config: VmcpConfig, announce: Callable[[VmcpConfig, int], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; backends are stopped on the way out. Returns the exit code.

    `announce` is called once the HTTP listener is bound, with the port it holds (the OS's choice for port 0)."""
    mask_secrets(config)
    try:
        gateway = Gateway(config)
    except PolicyLoadError as exc:
        logger.error("cannot start: auth.authorization.policies: %s", exc)
        return 2
    except (SecretMissing, AuditOutputError) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    except ModelError as exc:  # `vmcp` checks it at load; this is for other callers, or a model changed since
        logger.error("cannot start: optimizer.model: %s", exc)
        return 2
    if config.server.transport == "stdio":
        try:
            diagnostics = diagnostics_listener(gateway, None)  # no MCP endpoint: /readyz detail to loopback only
        except ListenError as exc:
            logger.error("cannot start: %s", exc)
            return exc.exit_status
        try:
            code = anyio.run(_serve_stdio_until_signal, gateway, diagnostics)
        finally:
            # A signal cancels the stdio server before `Gateway.stop` runs: write what must outlive us here.
            if gateway.optimizer is not None:
                gateway.optimizer.close()
        return _leaving(gateway, code)
    try:
        app = create_app(gateway)
    except (AuthSetupError, SecretMissing) as exc:  # SecretMissing: sessions.store's Redis
        logger.error("cannot start: %s", exc)
        return 2
    except ListenError as exc:
        logger.error("cannot start: %s", exc)
        return exc.exit_status
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            lifespan="on",
            timeout_graceful_shutdown=int(config.timeouts.shutdown),
            **listener_settings(config),  # the same limits as the metrics listener's
        )
    )
    original_startup = server.startup
    loop: asyncio.AbstractEventLoop | None = None

    async def startup(sockets: Any = None) -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        throttle_accept_errors(loop)
        await original_startup(sockets)
        if drain.draining and replicas:  # SIGTERM came during the start: the listener just opened takes nothing
            stop_accepting(server)
        if server.started and announce is not None and gateway.fatal is None:
            announce(config, _bound_port(server, config.server.port))

    drain: Drain = app.state.drain
    # Replicas share sessions through Redis: a draining one stops accepting, so a load balancer that never reads
    # /readyz (nginx OSS) goes to another. A lone gateway keeps listening while it drains: its clients' answers to
    # questions asked mid-call, their cancels, come through this port (/readyz says draining, new sessions 503).
    replicas = config.sessions.store == "redis"
    server.startup = startup  # type: ignore[method-assign]

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        # SIGTERM (a load balancer's orchestrator) or SIGHUP (the terminal went away; there is no config reload):
        # drain first. SIGINT, or a second signal: stop now. The signal is not re-raised after the server stops
        # (uvicorn would), so a drained exit is code 0.
        if sig not in DRAINING_SIGNALS or drain.draining or loop is None:
            if not server.should_exit:
                logger.info(
                    "%s: stopping now; calls still running are answered with an error", signal.Signals(sig).name
                )
            server.force_exit = server.should_exit and sig == signal.SIGINT  # Ctrl-C twice: no waiting at all
            stop_now()
            return
        loop.call_soon_threadsafe(begin_drain, sig)

    def stop_now() -> None:
        # uvicorn cancels what still runs and `Drain` answers each: a call with its JSON-RPC error (as the last
        # event of its stream when it streams), a stream with its end. Not `end_streams`: sse-starlette's watcher
        # would end a streaming call's answer first, with no result (its client then reconnects to a closed
        # listener), as often as its poll came before the cancellation.
        server.config.timeout_graceful_shutdown = 0
        server.should_exit = True

    stopping: list[asyncio.Task[None]] = []  # referenced until it ends

    def begin_drain(sig: int) -> None:
        if sig != signal.SIGTERM:
            logger.info(
                "%s: draining, then stopping (vmcp has no config reload: restart it to apply a change)",
                signal.Signals(sig).name,
            )
        drain.begin(gateway.sessions.owners)
        if replicas:  # another replica takes what comes next; a lone gateway keeps its port for the calls' rounds
            stop_accepting(server)
        stopping.append(asyncio.get_running_loop().create_task(drain_then_stop()))

    async def drain_then_stop() -> None:
        if not await drain.drained(config.server.drain_timeout, gateway.sessions.owners):
            stop_now()  # the calls past the drain's bound are answered "retry" now, as on Ctrl-C
            return
        end_streams()  # what is left are streams (a session's GET), which hold no answer
        server.should_exit = True

    server.handle_exit = handle_exit  # type: ignore[method-assign]

    def stop_serving(exc: BaseException) -> None:
        server.should_exit = True

    gateway.on_fatal = stop_serving
    with _on_hangup(handle_exit), _quiet_cancel_line():
        server.run()
    # `gateway.fatal`: the start failed after the config was accepted (an unexpected error while connecting the
    # backends): 1 like the port in use, not 2 ("cannot start as configured"), since a restart may get past it.
    return _leaving(gateway, 0 if server.started and gateway.fatal is None else 1)


def stop_accepting(server: uvicorn.Server) -> None:
    """The first steps of uvicorn's own `Server.shutdown`, taken when the drain begins: its listeners closed (a
    connect is refused) and each connection told to shut down, which closes an idle keep-alive one now and ends a
    busy one after its answer. Behind nginx, which never reads /readyz, a refused connect is what sends the next
    request to another replica (`proxy_next_upstream error`: always safe, nothing was sent); a kept-alive
    connection left open would carry it here. A request nginx wrote on an idle connection just as it closes still
    fails (502): hence the operator's order, the replica marked `down` first (deploy/nginx/vmcp.conf)."""
    for listener in getattr(server, "servers", ()):  # none yet during the start
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()


@contextmanager
def _on_hangup(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGHUP to `handler` while the server runs (uvicorn handles SIGINT and SIGTERM only). Its default would end
    the process at once: no drain, no log line, and a backend's child that ignores its stdin's end left running.
    Not where it is ignored (`nohup`), nor on Windows, which has no SIGHUP."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or signal.getsignal(hangup) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(hangup, handler)
    try:
        yield
    finally:
        signal.signal(hangup, previous)


class _CancelLine(logging.Filter):
    """uvicorn's "Cancel N running task(s), timeout graceful shutdown exceeded" is an ERROR, for what a stop does
    on purpose (Ctrl-C, a drain that ran out); `Drain` says what it did to each request, so here a plain line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("Cancel %s running task(s)"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "stop: cancelling %s request(s) and stream(s) still open", record.args
        return True


@contextmanager
def _quiet_cancel_line() -> Iterator[None]:
    uvicorn_log, cancel_line = logging.getLogger("uvicorn.error"), _CancelLine()
    uvicorn_log.addFilter(cancel_line)
    try:
        yield
    finally:
        uvicorn_log.removeFilter(cancel_line)


def _bound_port(server: uvicorn.Server, configured: int) -> int:
    """The port the listener holds: the configured one, or the one the OS picked when that is 0."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return configured


def _leaving(gateway: Gateway, code: int) -> int:
    """`code`, or, while the embedder thread is still inside the model (a large catalogue's embedding outlasted
    the shutdown's wait), the process's end without the interpreter's exit: ONNX Runtime's threads torn down
    under a running call abort it ("terminate called without an active exception"). Everything that must
    outlive the process (usage history, telemetry, backends) was closed by then."""
    if gateway.optimizer is not None and gateway.optimizer.embedding:
        logger.warning(
            "optimizer: leaving while the catalogue is still being embedded (what is done is kept; the rest resumes at the next start)"
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


async def _serve_stdio_until_signal(gateway: Gateway, diagnostics: DiagnosticsServer | None) -> int:
    stop, hurry = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as task_group:

        async def watch_signals() -> None:
            if sys.platform == "win32":
                return  # asyncio has no signal handlers on Windows; Ctrl+C arrives as KeyboardInterrupt
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for received in signals:
                    name = signal.Signals(received).name
                    if not gateway.started:
                        break  # during start-up: nothing to answer, no more waiting
                    if stop.is_set():
                        # A second signal: what still runs is answered with an error now, not at timeouts.shutdown.
                        logger.info("%s again: stopping now; calls still running are answered with an error", name)
                        hurry.set()
                        task_group.start_soon(_cancel_after, task_group.cancel_scope, ANSWER_SECONDS)
                        return
                    # As when the client closes stdin: calls in flight are answered (within timeouts.shutdown), then
                    # the process ends.
                    logger.info("%s: stopping the gateway and its backends", name)
                    stop.set()
                    # The bound on the stop, past the wait for the calls in flight: the transport answers those
                    # still running when that wait ends, and cancelled with them those answers would be lost.
                    bound = gateway.config.timeouts.shutdown + ANSWER_SECONDS
                    task_group.start_soon(_cancel_after, task_group.cancel_scope, bound)
            task_group.cancel_scope.cancel()

        task_group.start_soon(watch_signals)
        gateway.on_fatal = lambda exc: task_group.cancel_scope.cancel()
        try:
            await serve_stdio(gateway, diagnostics, stop, hurry)
        except StartupError:
            return 1  # already logged, naming the backends
        task_group.cancel_scope.cancel()
    return 1 if gateway.fatal is not None else 0  # as run_gateway's, over HTTP


async def _cancel_after(scope: anyio.CancelScope, seconds: float) -> None:
    """The bound on a stop: what has not ended `seconds` after the signal is cancelled."""
    await anyio.sleep(seconds)
    logger.warning("stop: still running %gs after the signal; cancelling what is left", seconds)
    scope.cancel()


def mask_secrets(config: VmcpConfig) -> None:
    """Every log handler masks backend env and header values, the gateway's own client secret, the secrets the
    backends' credentials learn while it runs (fetched tokens, rotated files: `LEARNT`) and any URL's
    `user:password@`, whoever logs them (us, the SDK, httpx)."""
    secrets = [value for backend in config.backends for value in secret_values(backend)]
    introspection_secret = config.auth.incoming.oauth.client_secret_env
    if introspection_secret:
        with contextlib.suppress(ValueError):  # unset: the start stops (auth/authenticators.py)
            secrets.append(env_secret(introspection_secret))  # the gateway's own client secret, as it is sent
    log_filter = SecretFilter(secrets, LEARNT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
