"""The catalogue of the backends that are ready now, rebuilt when one of them changes."""

from __future__ import annotations

import logging
from collections.abc import Collection

import anyio.to_thread

from vmcp_opt.aggregation.catalog import BackendSource, Catalog, RoutedTool, build_catalog
from vmcp_opt.aggregation.moves import warn_moves
from vmcp_opt.backends import BackendConnection, BackendManager, BackendState
from vmcp_opt.config import AggregationConfig
from vmcp_opt.display import printable, shorten

logger = logging.getLogger(__name__)

# A backend's own description (`serverInfo`) goes into each of its tools' find_tool documents: whole, 1 MB of it
# over 200 tools was 200 MB of keyword index and saved catalogue. The operator's `description` is not cut.
MAX_SERVER_DESCRIPTION = 500


class LiveCatalog:
    def __init__(self, backends: BackendManager, config: AggregationConfig) -> None:
        self.backends = backends
        self.config = config
        self.current = Catalog()
        # Every tool name any catalogue has held, as last served: a call to a tool whose backend is down
        # (restarting, unhealthy) is judged by the policy on that tool, then told so, rather than that the tool
        # does not exist.
        self._known_tools: dict[str, RoutedTool] = {}
        # The same for workflow-only tools, apart: asked of a step's call alone (that names it: `Exchange.may_reach`),
        # since a client asking of one must get what a made-up name gets, whether its backend is up or down.
        self._known_hidden: dict[str, RoutedTool] = {}

    def build(self) -> Catalog:
        """The catalogue of the ready backends (a tool that cannot be served is dropped with a warning)."""
        return catalog_of(self.backends, self.config)

    async def rebuild(self) -> None:
        """Swap in the catalogue of the backends ready now, merged on a worker thread: screening, conflicts
        and renaming cost ~0.2 s of CPU at 10k tools, which the event loop would stand still for. The ready
        backends' listings are taken here, on the loop (a connection replaces its listing whole)."""
        sources = sources_of(self.backends)
        before = self.current
        catalog = await anyio.to_thread.run_sync(build_catalog, sources, self.config)
        await anyio.to_thread.run_sync(warn_moves, before, catalog, sources)
        self.set(catalog)

    def set(self, catalog: Catalog) -> None:
        self.current = catalog
        # Kept: what the backends missing from this build (down, restarting) served last. Forgotten: what a
        # backend in it no longer serves. Kept whole, a backend renaming its tools at every `list_changed`
        # grew this without end, and a tool it had removed was called "served by a backend that is down".
        built_from = catalog.backend_descriptions.keys()
        self._known_tools = _kept(self._known_tools, built_from) | catalog.tools
        self._known_hidden = _kept(self._known_hidden, built_from) | catalog.workflow_only

    def known_tool(self, tool: str, *, hidden: bool = False) -> RoutedTool | None:
        """The tool of that name as a catalogue last served it (its backend, its annotations), or None.
        `hidden`: among the workflow-only tools instead, for a step that may reach that name."""
        return (self._known_hidden if hidden else self._known_tools).get(tool)

    def why_unavailable(self, tool: str, *, hidden: bool = False) -> str | None:
        """Why a tool that was served is not now (its backend is down), or None if it never was. For the
        client: the backend's last error (URLs, exception text) stays in /readyz and the logs. `hidden`: as
        `known_tool`'s."""
        known = self.known_tool(tool, hidden=hidden)
        connection = self.backends.get(known.backend) if known is not None else None
        if known is None or connection is None or connection.state is BackendState.READY:
            return None
        return (
            f"tool '{shorten(tool)}' is served by backend '{known.backend}', which is {connection.state.value}; "
            "it is listed again once the backend is back"
        )


def _kept(known: dict[str, RoutedTool], built_from: Collection[str]) -> dict[str, RoutedTool]:
    """What the backends missing from a build served last."""
    return {name: t for name, t in known.items() if t.backend not in built_from}


def catalog_of(backends: BackendManager, config: AggregationConfig) -> Catalog:
    """The catalogue of the backends that are ready now."""
    return build_catalog(sources_of(backends), config)


def sources_of(backends: BackendManager) -> list[BackendSource]:
    """What the ready backends list now."""
    return [BackendSource(c.name, c.listing, c.config.description or _server_description(c)) for c in backends.ready()]


def _server_description(connection: BackendConnection) -> str:
    info = connection.server_info
    if info is None:
        return ""
    return printable((info.description or info.title or "")[:MAX_SERVER_DESCRIPTION])
