"""Tool providers: what a caller can call is the union of every provider's tools.

Backend tools (the aggregated catalogue), the optimizer's meta-tools, and later composite workflows are
registered on the router the same way. Each says which tools it serves, which of them `tools/list`
shows, and runs a call it owns; a call that must reach a backend goes back through the router
(`Dispatch`), so policy, session choice and the health guard apply to every step the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from pydantic import BaseModel

from vmcp_opt.aggregation import LiveCatalog
from vmcp_opt.arguments import ArgumentError, ArgumentValidator
from vmcp_opt.auth import Caller
from vmcp_opt.display import shorten
from vmcp_opt.routing.exchange import Exchange, forwarded_meta
from vmcp_opt.routing.policy import Policy

ResultT = TypeVar("ResultT", bound=BaseModel)

GATEWAY_SOURCE = "vmcp"  # the source of the gateway's own tools (meta-tools)


@dataclass(frozen=True)
class ProvidedTool:
    name: str  # as callers see it
    tool: types.Tool
    source: str  # the backend that serves it, or GATEWAY_SOURCE
    original_name: str  # the name at its source
    source_description: str = ""


class Dispatch(Protocol):
    """The router, as providers reach it: another tool by name, a request to a backend, the policy."""

    policy: Policy

    def may_use(self, caller: Caller, names: Sequence[str]) -> list[str]: ...

    async def usable_tools_async(self, caller: Caller) -> frozenset[str] | None: ...

    async def call_tool(
        self, caller: Caller, name: str, arguments: dict[str, Any] | None, exchange: Exchange
    ) -> types.CallToolResult: ...

    async def send(
        self,
        caller: Caller,
        exchange: Exchange,
        backend: str,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        progress: ProgressFnT | None = None,
    ) -> ResultT: ...


# The tool a client's own tools/call named, per front request: (the request's key, the tool's name), set by the
# first `ToolCall` made for the request in its task. A call made under it (the optimizer's call_tool naming its
# target) finds the outer tool's name there: its result is not the answer to the client's request.
_answering: ContextVar[tuple[object, str] | None] = ContextVar("vmcp_answering_tool", default=None)


@dataclass(frozen=True)
class ToolCall:
    caller: Caller
    tool: ProvidedTool
    arguments: dict[str, Any] | None
    exchange: Exchange
    router: Dispatch

    def __post_init__(self) -> None:
        if self.exchange.step_of is not None:
            return  # a workflow's step answers the workflow, never the client
        key = _request_key(self.exchange)
        seen = _answering.get()
        if seen is None or seen[0] != key:
            _answering.set((key, self.tool.name))

    @property
    def answers_client(self) -> bool:
        """Whether this call's result goes out as the answer to the client's own tools/call of this tool (not a
        workflow's step, not call_tool's target): only then is the tool's output schema the client's to apply."""
        if self.exchange.step_of is not None:
            return False
        return _answering.get() == (_request_key(self.exchange), self.tool.name)


def _request_key(exchange: Exchange) -> object:
    """The front request an exchange answers: its session and JSON-RPC id (an approval's confirmation makes a new
    exchange for the same request), or the exchange itself when it has no id (a call the gateway makes)."""
    if exchange.request_id is None:
        return id(exchange)
    return (id(exchange.session), exchange.request_id)


class ToolProvider(Protocol):
    # Whether find_tool indexes these tools (the meta-tools themselves are not searched for).
    searchable: bool

    def tools(self) -> Mapping[str, ProvidedTool]:
        """Every tool it serves now, by the name callers use."""
        ...

    def listed(self) -> Sequence[ProvidedTool]:
        """The ones `tools/list` shows."""
        ...

    def why_unavailable(self, name: str) -> str | None:
        """Why a tool it served before cannot be called now, or None when it does not know the name."""
        ...

    async def call(self, call: ToolCall) -> types.CallToolResult: ...


class BackendTools:
    """The catalogue's tools: each call is checked against the tool's schema and sent to its backend
    under its original name."""

    searchable = True

    def __init__(
        self, catalog: LiveCatalog, validator: ArgumentValidator, listed: Callable[[str], bool] = lambda name: True
    ) -> None:
        self._catalog = catalog
        self._listed = listed  # with the optimizer on, only pinned tools are listed
        self._validator = validator
        self._view: tuple[object, dict[str, ProvidedTool]] | None = None
        # Kept per catalogue too: with the optimizer on, filtering 10k tools for the pinned few cost 1.5 ms
        # of the event loop's CPU per tools/list.
        self._listed_view: tuple[object, list[ProvidedTool]] | None = None

    def tools(self) -> Mapping[str, ProvidedTool]:
        catalog = self._catalog.current
        if self._view is None or self._view[0] is not catalog:
            descriptions = catalog.backend_descriptions
            self._view = (
                catalog,
                {
                    name: ProvidedTool(name, r.tool, r.backend, r.original_name, descriptions.get(r.backend, ""))
                    for name, r in catalog.tools.items()
                },
            )
        return self._view[1]

    def listed(self) -> Sequence[ProvidedTool]:
        catalog = self._catalog.current
        if self._listed_view is None or self._listed_view[0] is not catalog:
            self._listed_view = (catalog, [tool for name, tool in self.tools().items() if self._listed(name)])
        return self._listed_view[1]

    def why_unavailable(self, name: str) -> str | None:
        return self._catalog.why_unavailable(name)

    async def call(self, call: ToolCall) -> types.CallToolResult:
        tool = call.tool
        try:
            # Off the event loop, under a deadline: a backend's schema is untrusted (patterns, $refs).
            await self._validator.check_async(tool.name, tool.tool.input_schema, call.arguments)
        except ArgumentError as exc:
            return error_result(str(exc))
        params = types.CallToolRequestParams(
            name=tool.original_name, arguments=call.arguments, _meta=forwarded_meta(call.exchange.meta)
        )
        result = await call.router.send(
            call.caller,
            call.exchange,
            tool.source,
            types.CallToolRequest(params=params),
            types.CallToolResult,
            progress=call.exchange.progress_relay(),
        )
        schema = tool.tool.output_schema
        if schema is None or result.is_error or not call.answers_client:
            return result
        return await self._conforming(tool, schema, result)

    async def _conforming(
        self, tool: ProvidedTool, schema: dict[str, Any], result: types.CallToolResult
    ) -> types.CallToolResult:
        """`result`, or an error result when its structured content breaks the tool's declared output schema.

        The gateway is the server its clients see, and a server MUST return structured content that conforms to
        the schema it lists: passed on as is, the SDK's client raises and the agent gets no result at all. The
        error names the backend, the tool and the first violation, and keeps the backend's text for the agent.
        """
        if result.structured_content is None:
            problem: str | None = "it returned no structured content"
        else:
            problem = await self._validator.output_problem_async(tool.name, schema, result.structured_content)
            problem = problem and f"its structured content does not match: {problem}"
        if problem is None:
            return result
        message = (
            f"backend '{shorten(tool.source)}' answered tool '{shorten(tool.original_name)}' with a result that "
            f"breaks the tool's output schema ({problem}); the backend's own text follows, if any"
        )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=message), *result.content],
            is_error=True,
            _meta=result.meta,  # the backend's (a trace id, a cost): still the client's
        )


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)
