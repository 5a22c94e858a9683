"""One-shot looks at the configured backends, for the CLI (`vmcp backends`, `vmcp index ...`): no serving."""

from __future__ import annotations

from typing import Any, NamedTuple

import anyio

from vmcp_opt.aggregation import Catalog, catalog_of
from vmcp_opt.backends import BackendManager
from vmcp_opt.backends.credentials import with_auth_health
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import HealthMonitor
from vmcp_opt.optimizer.listing import Listing
from vmcp_opt.optimizer.tokens import tools_list_tokens
from vmcp_opt.optimizer.tool_records import meta_tools_tokens, provided_record, tool_record
from vmcp_opt.workflows.provider import workflow_tools


async def collect_listing(config: VmcpConfig) -> Listing:
    """The tools find_tool would index, as records, and what their `tools/list` costs: one look, no serving.

    The gateway's searchable tools (`Router.searchable_tools`): the configured workflows first (a workflow
    keeps its name over a backend tool of the same name), then the live catalogue's tools. The backends that did
    not connect are named in it (`Listing.not_connected`): its caller then keeps the saved listing."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        catalog = catalog_of(manager, config.aggregation)
        manager.stop()
    not_connected = tuple(name for name in manager.connections if name not in catalog.backend_descriptions)
    workflows = workflow_tools(config.workflows, catalog)
    served = [routed for name, routed in catalog.tools.items() if name not in workflows]
    records = [provided_record(tool) for tool in workflows.values()]
    records += [tool_record(routed, catalog.backend_descriptions.get(routed.backend, "")) for routed in served]
    model = config.optimizer.model
    tokens = tools_list_tokens([tool.tool for tool in workflows.values()] + [routed.tool for routed in served], model)
    return Listing(records, tokens, model, listed_by="vmcp index", not_connected=not_connected)


class Connected(NamedTuple):
    """One connection to each backend (`vmcp validate --connect`)."""

    failed: dict[str, str]  # backend name -> why it did not connect
    tool_names: set[str]  # what the live catalogue serves: workflow steps are checked against these
    workflow_only: set[str]  # names only workflow steps may call (`aggregation.tools.<b>.workflow_only`)


async def connect_once(config: VmcpConfig) -> Connected:
    """Connect each backend once: those that failed, with their (redacted) error, and the catalogue's names."""
    manager = _one_shot_backends(config)
    async with anyio.create_task_group() as task_group:
        await manager.start(task_group)
        failed = {c.name: c.last_error or c.state.value for c in manager.not_ready()}
        catalog = catalog_of(manager, config.aggregation)
        manager.stop()
    return Connected(failed, set(catalog.tools), set(catalog.workflow_only))


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
