"""Run the gateway as a process: HTTP under uvicorn or stdio; probe backends for `vmcp backends`."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import anyio
import uvicorn

from vmcp_opt.aggregation import ConflictError
from vmcp_opt.backends import BackendManager
from vmcp_opt.config import VmcpConfig
from vmcp_opt.server.gateway import Gateway
from vmcp_opt.server.http import create_app
from vmcp_opt.server.stdio import serve_stdio

logger = logging.getLogger(__name__)


def build_gateway(config: VmcpConfig) -> Gateway:
    gateway = Gateway(config)
    if config.optimizer.enabled:
        from vmcp_opt.optimizer.metatools import OptimizerFront

        gateway.front = OptimizerFront(gateway, config)
    return gateway


def run_gateway(config: VmcpConfig, announce: Callable[[VmcpConfig], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; backends are stopped on the way out. Returns the exit code."""
    gateway = build_gateway(config)
    if config.server.transport == "stdio":
        return anyio.run(_serve_stdio_until_signal, gateway)
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
    try:
        server.run()
    except ConflictError as exc:
        logger.error("cannot start: %s", exc)
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
        try:
            await serve_stdio(gateway)
        except ConflictError as exc:
            logger.error("cannot start: %s", exc)
            return 2
        task_group.cancel_scope.cancel()
    return 0


async def probe_backends(config: VmcpConfig) -> list[dict[str, Any]]:
    manager = BackendManager(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        summaries = [connection.summary() for connection in manager.connections.values()]
        manager.stop()
    return summaries
