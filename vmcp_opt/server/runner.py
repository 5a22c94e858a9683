"""Run the gateway as a process: HTTP under uvicorn or stdio; probe backends for `vmcp backends`."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import anyio
import uvicorn

from vmcp_opt.aggregation import ConflictError, catalog_of
from vmcp_opt.backends import BackendManager
from vmcp_opt.backends.secrets import SecretFilter, secret_values
from vmcp_opt.config import VmcpConfig
from vmcp_opt.gateway import Gateway, StartupError
from vmcp_opt.health import HealthMonitor
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.metatools import META_TOOLS, catalog_records, tool_json
from vmcp_opt.optimizer.tokens import count_tokens
from vmcp_opt.server.http import create_app
from vmcp_opt.server.stdio import serve_stdio

logger = logging.getLogger(__name__)


def run_gateway(config: VmcpConfig, announce: Callable[[VmcpConfig], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; backends are stopped on the way out. Returns the exit code."""
    mask_secrets(config)
    gateway = Gateway(config)
    if config.server.transport == "stdio":
        try:
            return anyio.run(_serve_stdio_until_signal, gateway)
        finally:
            # A signal cancels the stdio server before `Gateway.stop` runs: write what must outlive us here.
            if gateway.optimizer is not None:
                gateway.optimizer.close()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway),
            host=config.server.host,
            port=config.server.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=int(config.timeouts.shutdown),
        )
    )
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets)
        if server.started and announce is not None:
            announce(config)

    server.startup = startup  # type: ignore[method-assign]

    def stop_serving(exc: BaseException) -> None:
        server.should_exit = True

    gateway.on_fatal = stop_serving
    try:
        server.run()
    except ConflictError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    if gateway.fatal is not None:
        return 2
    return 0 if server.started else 1


async def _serve_stdio_until_signal(gateway: Gateway) -> int:
    async with anyio.create_task_group() as task_group:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    task_group.cancel_scope.cancel()
                    return

        task_group.start_soon(watch_signals)
        gateway.on_fatal = lambda exc: task_group.cancel_scope.cancel()
        try:
            await serve_stdio(gateway)
        except ConflictError as exc:
            logger.error("cannot start: %s", exc)
            return 2
        except StartupError:
            return 1  # already logged, naming the backends
        task_group.cancel_scope.cancel()
    return 2 if gateway.fatal is not None else 0


def mask_secrets(config: VmcpConfig) -> None:
    """Every log handler masks backend env and header values, whoever logs them (us, the SDK, httpx)."""
    secrets = [value for backend in config.backends for value in secret_values(backend)]
    if not secrets:
        return
    log_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)


async def collect_tool_records(config: VmcpConfig) -> list[ToolRecord]:
    """The live catalogue's tools as index records (`vmcp index build|stats|search`): one look, no serving."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        records = catalog_records(catalog_of(manager, config.aggregation))
        manager.stop()
    return records


def meta_tool_tokens(config: VmcpConfig) -> int:
    """Tokens of `tools/list` with the optimizer on: the meta-tools (pinned tools are not known offline)."""
    return count_tokens(tool_json(list(META_TOOLS)), config.optimizer.model)


def _one_shot_backends(config: VmcpConfig) -> BackendManager:
    manager = BackendManager(config)
    for connection in manager.connections.values():
        connection.restart = None  # one attempt each: this is a look, not a server
    return manager


async def probe_backends(config: VmcpConfig) -> list[dict[str, Any]]:
    """Connect each backend once, ping it, and report its state, health and counts."""
    manager = _one_shot_backends(config)
    monitor = HealthMonitor(manager, config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        await monitor.check_all()
        summaries = [
            {**connection.summary(), **monitor.summary(connection.name)} for connection in manager.connections.values()
        ]
        manager.stop()
    return summaries
