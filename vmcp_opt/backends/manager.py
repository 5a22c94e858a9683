"""All backends of one gateway: connected concurrently at start-up, each with its own deadline."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from vmcp_opt.backends.connection import BackendConnection, BackendState
from vmcp_opt.config import VmcpConfig

logger = logging.getLogger(__name__)

ChangeListener = Callable[[BackendConnection], Awaitable[None]]


class BackendManager:
    def __init__(self, config: VmcpConfig) -> None:
        self.config = config
        self._listeners: list[ChangeListener] = []
        self.connections: dict[str, BackendConnection] = {
            backend.name: BackendConnection(
                backend,
                base_dir=Path(config.base_dir),
                connect_timeout=config.connect_timeout(backend),
                call_timeout=config.call_timeout(backend),
                on_change=self._notify,
                restart=config.failure.restart,
                limits=config.limits,
            )
            for backend in config.backends
        }

    def add_listener(self, listener: ChangeListener) -> None:
        """`listener(connection)` runs after a backend's tools, resources or prompts changed."""
        self._listeners.append(listener)

    async def _notify(self, connection: BackendConnection) -> None:
        for listener in self._listeners:
            await listener(connection)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start every backend in `task_group` and return once each is ready or has failed."""
        for connection in self.connections.values():
            task_group.start_soon(connection.run, name=f"backend:{connection.name}")
        async with anyio.create_task_group() as waiters:
            for connection in self.connections.values():
                waiters.start_soon(connection.wait_ready)
        ready = [c.name for c in self.connections.values() if c.state is BackendState.READY]
        failed = [f"{c.name} ({c.last_error})" for c in self.connections.values() if c.state is not BackendState.READY]
        logger.info("backends ready: %s", ", ".join(ready) or "none")
        if failed:
            logger.warning("backends not connected: %s", "; ".join(failed))

    def stop(self) -> None:
        for connection in self.connections.values():
            connection.stop()

    def not_ready(self) -> list[BackendConnection]:
        return [c for c in self.connections.values() if c.state is not BackendState.READY]

    def ready(self) -> list[BackendConnection]:
        return [c for c in self.connections.values() if c.state is BackendState.READY]

    def get(self, name: str) -> BackendConnection | None:
        return self.connections.get(name)
