"""Run the gateway as a process: HTTP under uvicorn or stdio, until a signal; backends stopped on the way out."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import anyio
import uvicorn

from vmcp_opt.auth.authenticators import AuthSetupError
from vmcp_opt.backends.secrets import SecretFilter, secret_values
from vmcp_opt.config import VmcpConfig
from vmcp_opt.gateway import Gateway, StartupError
from vmcp_opt.optimizer.model_registry import ModelError
from vmcp_opt.routing.policy import PolicyLoadError
from vmcp_opt.server.connections import fit_connections, limited_protocol, throttle_accept_errors
from vmcp_opt.server.diagnostics import DiagnosticsServer, ListenError
from vmcp_opt.server.drain import Drain, end_streams
from vmcp_opt.server.http import create_app, diagnostics_listener
from vmcp_opt.server.stdio import serve_stdio
from vmcp_opt.shared.secrets import SecretMissing
from vmcp_opt.telemetry.audit import AuditOutputError

logger = logging.getLogger(__name__)


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
    limits = config.limits
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level="warning",
            log_config=None,  # uvicorn's lines through our handler, in the configured format
            lifespan="on",
            timeout_graceful_shutdown=int(config.timeouts.shutdown),
            http=limited_protocol(
                limits.http_header_timeout,
                limits.http_body_timeout,
                fit_connections(limits.max_connections),
                limits.max_header_bytes,
                limits.max_connections_per_address,
                [ipaddress.ip_network(network) for network in config.server.trusted_proxies],
            ),
            timeout_keep_alive=math.ceil(limits.http_keep_alive_timeout),
            # The client's address from X-Forwarded-For only behind a trusted proxy (uvicorn's own default
            # trusts any loopback peer, which would let a local client name itself anything).
            proxy_headers=bool(config.server.trusted_proxies),
            forwarded_allow_ips=[str(network) for network in config.server.trusted_proxies],
        )
    )
    original_startup = server.startup
    loop: asyncio.AbstractEventLoop | None = None

    async def startup(sockets: Any = None) -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        throttle_accept_errors(loop)
        await original_startup(sockets)
        if server.started and announce is not None and gateway.fatal is None:
            announce(config, _bound_port(server, config.server.port))

    server.startup = startup  # type: ignore[method-assign]
    drain: Drain = app.state.drain

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        # SIGTERM (a load balancer's orchestrator): drain first. SIGINT, or a second signal: stop now. The
        # signal is not re-raised after the server stops (uvicorn would), so a drained exit is code 0.
        if sig != signal.SIGTERM or drain.draining or loop is None:
            if not server.should_exit:
                logger.info(
                    "%s: stopping now; calls still running are answered with an error", signal.Signals(sig).name
                )
            server.force_exit = server.should_exit and sig == signal.SIGINT  # Ctrl-C twice: no waiting at all
            server.config.timeout_graceful_shutdown = 0  # stop at once: uvicorn cancels what runs (`Drain`)
            server.should_exit = True
            end_streams()
            return
        loop.call_soon_threadsafe(begin_drain)

    stopping: list[asyncio.Task[None]] = []  # referenced until it ends

    def begin_drain() -> None:
        drain.begin()
        stopping.append(asyncio.get_running_loop().create_task(drain_then_stop()))

    async def drain_then_stop() -> None:
        await drain.drained(config.server.drain_timeout)
        end_streams()
        server.should_exit = True

    server.handle_exit = handle_exit  # type: ignore[method-assign]

    def stop_serving(exc: BaseException) -> None:
        server.should_exit = True

    gateway.on_fatal = stop_serving
    server.run()
    # `gateway.fatal`: the start failed after the config was accepted (an unexpected error while connecting the
    # backends): 1 like the port in use, not 2 ("cannot start as configured"), since a restart may get past it.
    return _leaving(gateway, 0 if server.started and gateway.fatal is None else 1)


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
        logger.warning("optimizer: leaving while the catalogue is still being embedded (it resumes at the next start)")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


async def _serve_stdio_until_signal(gateway: Gateway, diagnostics: DiagnosticsServer | None) -> int:
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:

        async def watch_signals() -> None:
            if sys.platform == "win32":
                return  # asyncio has no signal handlers on Windows; Ctrl+C arrives as KeyboardInterrupt
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for received in signals:
                    if stop.is_set() or not gateway.started:
                        break  # a second signal, or one during start-up: no more waiting
                    # As when the client closes stdin: calls in flight are answered (within timeouts.shutdown), then
                    # the process ends.
                    logger.info("%s: stopping the gateway and its backends", signal.Signals(received).name)
                    stop.set()
                    task_group.start_soon(_cancel_after, task_group.cancel_scope, gateway.config.timeouts.shutdown)
            task_group.cancel_scope.cancel()

        task_group.start_soon(watch_signals)
        gateway.on_fatal = lambda exc: task_group.cancel_scope.cancel()
        try:
            await serve_stdio(gateway, diagnostics, stop)
        except StartupError:
            return 1  # already logged, naming the backends
        task_group.cancel_scope.cancel()
    return 1 if gateway.fatal is not None else 0  # as run_gateway's, over HTTP


async def _cancel_after(scope: anyio.CancelScope, seconds: float) -> None:
    """The bound on a stop: what has not ended `seconds` after the signal is cancelled."""
    await anyio.sleep(seconds)
    logger.warning("stop: still running %gs after the signal (timeouts.shutdown); cancelling", seconds)
    scope.cancel()


def mask_secrets(config: VmcpConfig) -> None:
    """Every log handler masks backend env and header values and the gateway's own client secret, whoever
    logs them (us, the SDK, httpx)."""
    secrets = [value for backend in config.backends for value in secret_values(backend)]
    introspection_secret = config.auth.incoming.oauth.client_secret_env
    if introspection_secret and os.environ.get(introspection_secret):
        secrets.append(os.environ[introspection_secret])  # the gateway's own client secret
    if not secrets:
        return
    log_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
