"""One-shot looks at the configured backends, for the CLI (`vmcp backends`, `vmcp index ...`): no serving."""

from __future__ import annotations

from typing import Any

import anyio

from vmcp_opt.aggregation import Catalog, catalog_of
from vmcp_opt.backends import BackendManager
from vmcp_opt.backends.credentials import with_auth_health
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import HealthMonitor
from vmcp_opt.optimizer.listing import Listing
from vmcp_opt.optimizer.metatools import catalog_records, meta_tools_tokens
from vmcp_opt.optimizer.tokens import tools_list_tokens


async def collect_listing(config: VmcpConfig) -> Listing:
    """The live catalogue's tools as index records, and what their `tools/list` costs: one look, no serving."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        catalog = catalog_of(manager, config.aggregation)
        manager.stop()
    model = config.optimizer.model
    tokens = tools_list_tokens([routed.tool for routed in catalog.tools.values()], model)
    return Listing(catalog_records(catalog), tokens, model)


async def catalogue_tool_names(config: VmcpConfig) -> set[str]:
    """The names the live catalogue serves (`vmcp validate --connect` checks workflow steps against them)."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        names = set(catalog_of(manager, config.aggregation).tools)
        manager.stop()
    return names


async def collect_catalog(config: VmcpConfig) -> Catalog:
    """The live catalogue, one look (`vmcp auth check`)."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        catalog = catalog_of(manager, config.aggregation)
        manager.stop()
    return catalog


def meta_tool_tokens(config: VmcpConfig) -> int:
    """Tokens of `tools/list` with the optimizer on: the meta-tools (pinned tools are not known offline)."""
    return meta_tools_tokens(config.optimizer.model)


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
            with_auth_health({**connection.summary(), **monitor.summary(connection.name)})
            for connection in manager.connections.values()
        ]
        manager.stop()
    return summaries
