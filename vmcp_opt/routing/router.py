"""The router: the one path every MCP request takes from the handlers to a backend.

    lookup (which provider or backend serves the target)
      → policy (may this caller use it)
      → session (which backend session carries it for this caller)
      → guarded send (the backend's circuit breaker and deadline)
      → result (and, for a tool call, the observers: usage learning)

Every request, and every request sent on to a backend, is also an `Operation` its `watchers` hear start and
finish (routing/operations.py): audit, metrics and traces attach there (vmcp_opt/telemetry/).

Past ~450 lines on purpose: lookup, policy, lists and the guarded send are one path read top to bottom; the per-item
helpers already live beside it (policy.py, operations.py, providers.py, sessions.py).

Handlers, the optimizer's meta-tools and (later) workflow steps all enter here. Lists go through the same
policy, item by item, so a caller sees exactly what it may use.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeVar

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt.aggregation import LiveCatalog
from vmcp_opt.aggregation.catalog import uri_too_long
from vmcp_opt.auth import Caller
from vmcp_opt.backends import BackendConnection, BackendManager
from vmcp_opt.backends.connection import BackendUnavailable
from vmcp_opt.backends.errors import over_result_cap
from vmcp_opt.backends.secrets import masked_data, redact
from vmcp_opt.display import shorten
from vmcp_opt.health import CircuitOpen, Guard
from vmcp_opt.logs import CappedLog, ThrottledLog, masked_userinfo
from vmcp_opt.routing.approval import Approvals, NotApproved
from vmcp_opt.routing.backend_answers import backend_failed, check_prompt_arguments, naming_backend_once, unstamped
from vmcp_opt.routing.exchange import Exchange, forwarded_meta
from vmcp_opt.routing.operations import (
    Op,
    OperationWatcher,
    completion_target,
    current,
    request_target,
    watched,
)
from vmcp_opt.routing.policy import (
    AllowAll,
    Decision,
    Denied,
    Operation,
    Policy,
    RoutedUri,
    Target,
    completion_template,
    explain,
    resource_not_found,
    resource_targets,
    unknown_prompt,
    unknown_template,
)
from vmcp_opt.routing.providers import BackendTools, ProvidedTool, ToolCall, ToolProvider, error_result
from vmcp_opt.routing.sessions import SessionChooser
from vmcp_opt.routing.views import MergedToolList, ToolViews

logger = logging.getLogger(__name__)
# `server.call_log_rate`'s default (config/sections.py): the per-call lines a second.
CALL_LOG_RATE = 20.0

ResultT = TypeVar("ResultT", bound=BaseModel)
ItemT = TypeVar("ItemT")


# Seconds between two log lines of one caller's denials (the audit log records every one), and callers
# remembered for it: past that many, they are all forgotten (at worst one more line each), so memory stays bounded.
DENIAL_LOG_INTERVAL = 60.0
DENIAL_LOG_CALLERS = 10_000

# Tools a wrong name's suggestion names at most.
MEANT_MOST = 8
# What a name's words are joined with, dropped when names are compared for `Router.meant`: a model writes
# `get_sum` for `get-sum`, `get.sum` or `getSum` as readily as another case.
_NAME_SEPARATORS = str.maketrans("", "", "-_. /:\t\n\r")


def _name_key(name: str) -> str:
    """`name` as `Router.meant` compares it: case-folded, without separators (`Get-Sum`, `get_sum`: `getsum`)."""
    return name.casefold().translate(_NAME_SEPARATORS)


class UnknownTool(MCPError):
    """`why`: the router's `why_unknown` for this name, which then is the whole message. `meant`: the tools
    the caller may use that the name likely meant (`Router.meant`), suggested in the message."""

    def __init__(self, name: str, why: str | None = None, meant: Sequence[str] = ()) -> None:
        hint = f"; did you mean {' or '.join(repr(m) for m in meant)}?" if meant else ""
        super().__init__(types.INVALID_PARAMS, why or f"Unknown tool: '{shorten(name)}'{hint}")
        self.name = name
        self.why = why
        self.meant = list(meant)


class DeniedTool(Denied, UnknownTool):
    """A tool the policy refuses the caller: `absent`'s very answer (an unknown name's, its suggestions among the
    tools the caller may use, so never the refused one), and a `Denied` to the audit and to workflows."""

    def __init__(self, caller: Caller, target: Target, reason: str, absent: UnknownTool) -> None:
        super().__init__(caller, target, reason, absent)
        self.name, self.why, self.meant = absent.name, absent.why, absent.meant


class CallObserver(Protocol):
    def tool_called(self, caller: Caller, tool: ProvidedTool, result: types.CallToolResult, exchange: Exchange) -> None:
        """A tool call finished with `result` (a backend's tool, or a provider's own); `exchange.step_of`
        names the workflow when one of its steps made the call rather than the client."""
        ...


class CallLimiter(Protocol):
    def admitted(self, caller: Caller, tool: str, *, taken: bool = False) -> AbstractAsyncContextManager[None]:
        """Around a tool call: raises `LimitReached` (routing/budget.py) when a rate limit refuses it;
        `taken`: the client's request paid before it reached the router (HTTP, server/rate_limit_gate.py)."""
        ...

    async def paid(self, caller: Caller, method: str, *, taken: bool = False) -> None:
        """A request other than a tool call about to reach a backend (`resources/read`, `prompts/get`,
        `completion/complete`, `resources/subscribe`) pays as a tool call does, or raises `LimitReached`."""
        ...


class Router:
    def __init__(
        self,
        catalog: LiveCatalog,
        backends: BackendManager,
        sessions: SessionChooser,
        guard: Guard,
        policy: Policy | None = None,
        call_log_rate: float = CALL_LOG_RATE,
    ) -> None:
        self.catalog = catalog
        self.backends = backends
        self.sessions = sessions
        self.guard = guard
        self.policy: Policy = policy or AllowAll()
        self.providers: list[ToolProvider] = []
        self.observers: list[CallObserver] = []
        # Told of every operation's start and end (vmcp_opt/telemetry/); none: nothing is measured.
        self.watchers: list[OperationWatcher] = []
        # Calls the policy lets run only once the user approves them (routing/approval.py).
        self.approvals = Approvals(sessions.owners)
        # Rate limits on tool calls (vmcp_opt/shared/rate_limits.py); None: none configured.
        self.limiter: CallLimiter | None = None
        self.views = ToolViews(lambda: self.catalog.current, self._all_tools, _tool_target)
        self.merged = MergedToolList()  # what `tools/list` shows before any policy
        # Why a tool no provider serves here may be served elsewhere (replicas sharing sessions with another
        # config: vmcp_opt/shared/replica_shapes.py); None, or None from it: a bare "Unknown tool".
        self.why_unknown: Callable[[str], str | None] | None = None
        # The catalogue and its tools by case-folded name and name at the source (`meant`).
        self._folded: tuple[object, dict[str, list[str]]] | None = None
        # A guest looping on a forbidden tool: one line a minute, not one per request.
        self._denial_log = ThrottledLog(logger, DENIAL_LOG_INTERVAL, level=logging.INFO)
        self._denied: set[str] = set()  # the callers `_denial_log` holds a key for
        # One line per tool call, at most `server.call_log_rate` a second.
        self.call_log = CappedLog(logger, call_log_rate, "server.call_log_rate")

    def add_provider(self, provider: ToolProvider) -> None:
        """Providers earlier in the list win a name and come first in `tools/list`."""
        self.providers.append(provider)

    def _watch(self, op: Op) -> AbstractContextManager[Op | None]:
        return watched(self.watchers, op) if self.watchers else nullcontext()

    # --- what a caller may see -------------------------------------------------------------------

    def permits(self, caller: Caller, target: Target) -> bool:
        return self.policy.decide(caller, target).allowed

    def shows(self, caller: Caller, target: Target) -> bool:
        """A list item is shown when the caller may both list it and use it: a caller never sees what it
        cannot call, nor is told of what it may call but not list."""
        listed = Target(target.kind, target.name, target.source, "list", target.annotations)
        return self.permits(caller, listed) and self.permits(caller, target)

    # --- per-principal views of the tools (routing/views.py) -------------------------------------

    def usable_tools(self, caller: Caller) -> frozenset[str] | None:
        return self.views.usable(self.policy, caller)

    async def usable_tools_async(self, caller: Caller) -> frozenset[str] | None:
        return await self.views.usable_async(self.policy, caller)

    def forget_views(self) -> None:
        self.views.forget()
        self.merged.forget()
        self._folded = None

    def _all_tools(self, *, searchable_only: bool = False) -> dict[str, ProvidedTool]:
        """Every provider's tools by name, the first provider winning a name."""
        found: dict[str, ProvidedTool] = {}
        for provider in self.providers:
            if provider.searchable or not searchable_only:
                for name, provided in provider.tools().items():
                    found.setdefault(name, provided)
        return found

    def _unfiltered_list(self) -> list[ProvidedTool]:
        """What `tools/list` shows before any policy, the first provider winning a name (do not change it)."""
        return self.merged.of(self.providers).provided

    def _authorize(self, caller: Caller, target: Target, absent: MCPError) -> Decision:
        """The policy's decision; a refusal is logged for the operator and raised as `Denied`, which answers the
        caller with `absent`, what the item's absence gets (no oracle)."""
        decision = self._judged(caller, target)
        if not decision.allowed:
            raise Denied(caller, target, decision.reason, absent)
        return decision

    async def _authorize_tool(self, caller: Caller, target: Target) -> Decision:
        """`_authorize` for a tool: a refused caller gets what a name never served gets, suggestions included."""
        decision = self._judged(caller, target)
        if not decision.allowed:
            # A call refused for its arguments: the tool itself is listed, and is no suggestion for its own name.
            meant = [name for name in await self.meant(caller, target.name) if name != target.name]
            absent = UnknownTool(target.name, None, meant)
            raise DeniedTool(caller, target, decision.reason, absent)
        return decision

    def _judged(self, caller: Caller, target: Target) -> Decision:
        """The policy's decision, a refusal logged for the operator (who alone hears its reason)."""
        decision = self.policy.decide(caller, target)
        if not decision.allowed:
            self._log_denial(caller, target, decision.reason)
        return decision

    def _log_denial(self, caller: Caller, target: Target, reason: str) -> None:
        if caller.id not in self._denied and len(self._denied) >= DENIAL_LOG_CALLERS:
            # A new session per request makes a new caller each time: its keys must not grow for good.
            self._denied.clear()
            self._denial_log = ThrottledLog(logger, DENIAL_LOG_INTERVAL, level=logging.INFO)
        self._denied.add(caller.id)
        self._denial_log.warning(
            caller.id,
            "denied: %s (%s) may not %s %s %r%s",
            caller.id,
            caller.subject or "no subject",
            target.operation,
            target.kind,
            shorten(target.name),  # a resource URI can be 64 KiB; denied reads must not flood the log
            f": {shorten(reason)}" if reason else "",  # the caller is no longer told it (no oracle): the operator is
            extra={"caller": caller.id, "subject": caller.subject, "target": shorten(target.name)},
        )

    def visible_tools(self, caller: Caller) -> list[types.Tool]:
        if getattr(self.policy, "allows_everything", False):
            return self.listed_tools()
        usable = self.usable_tools(caller)
        return [
            p.tool
            for p in self._unfiltered_list()
            if (p.name in usable if usable is not None else self.shows(caller, _tool_target(p)))
        ]

    def initialized(self, caller: Caller, result: Any = None, started: float | None = None) -> None:
        """A client's session started (the SDK answered its `initialize` with `result`, which took from
        `started`, a `time.perf_counter()`): an operation for the watchers."""
        if self.watchers:
            op = Op("initialize", caller) if started is None else Op("initialize", caller, started=started)
            with watched(self.watchers, op):
                op.result = result

    async def list_tools(self, caller: Caller) -> list[types.Tool]:
        with self._watch(Op("tools/list", caller)) as op:
            await self.usable_tools_async(caller)
            tools = self.visible_tools(caller)
            if op is not None:
                op.result = tools
            return tools

    def list_prompts(self, caller: Caller) -> list[types.Prompt]:
        return self._listed(Op("prompts/list", caller), self.visible_prompts)

    def list_resources(self, caller: Caller) -> list[types.Resource]:
        return self._listed(Op("resources/list", caller), self.visible_resources)

    def list_templates(self, caller: Caller) -> list[types.ResourceTemplate]:
        return self._listed(Op("resources/templates/list", caller), self.visible_templates)

    def _listed(self, op: Op, visible: Callable[[Caller], list[ItemT]]) -> list[ItemT]:
        with self._watch(op) as watched_op:
            items = visible(op.caller)
            if watched_op is not None:
                watched_op.result = items
            return items

    def listed_tools(self) -> list[types.Tool]:
        """What `tools/list` shows before any policy (the gateway compares it to know when to notify)."""
        return list(self.merged.of(self.providers).tools)

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """A tool's input schema by name, for the transport's `Mcp-Param` header check: one lookup, no listing.

        That check runs before any handler and knows no caller. Under a policy, which may hide the tool from
        this caller, the answer is None, as for a tool that does not exist: its 400 would name a hidden tool's
        header-mapped arguments (and so tell that the tool exists). `param_header_mismatch` checks the same
        headers in the handler, once the caller is known."""
        if not self._hides_nothing():
            return None
        found = self._lookup(name)
        return dict(found[1].tool.input_schema) if found is not None else None

    def param_header_mismatch(
        self, caller: Caller, name: str, arguments: dict[str, Any] | None, headers: Mapping[str, str] | None
    ) -> MCPError | None:
        """The transport's 2026-07-28 `Mcp-Param` header check that `input_schema` leaves to the handler under a
        policy: the same `HEADER_MISMATCH` (a 400), but only for a caller the policy lets call the tool."""
        if headers is None or self._hides_nothing() or caller.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return None  # stdio has no headers; 2025-11-25 has no such check; the transport checked already
        found = self._lookup(name)
        if found is None:
            return None
        rejection = validate_mcp_param_headers(found[1].tool.input_schema, arguments or {}, headers)
        # The policy is asked only about a mismatch (rare); a caller it refuses is refused by `call_tool`, exactly
        # as for any tool hidden from it.
        if rejection is None or not self.permits(caller, _tool_target(found[1])):
            return None
        return MCPError(rejection.code, rejection.message, rejection.data)

    def _hides_nothing(self) -> bool:
        return bool(getattr(self.policy, "allows_everything", False))

    def searchable_tools(self) -> list[ProvidedTool]:
        """Every provider's tools that find_tool indexes (for all callers; `may_use` filters per caller)."""
        return list(self._all_tools(searchable_only=True).values())

    def may_use(self, caller: Caller, names: Sequence[str]) -> list[str]:
        """Which of these tool names the caller may see and call (find_tool's results pass through here)."""
        usable = self.usable_tools(caller)
        if usable is not None:
            return [name for name in names if name in usable]
        kept = []
        for name in names:
            provided = self._lookup(name)
            if provided is not None and self.shows(caller, _tool_target(provided[1])):
                kept.append(name)
        return kept

    def may_call(self, caller: Caller, name: str) -> bool:
        """Whether a call of `name` by this caller would reach its tool now: served, and used as the policy
        allows (what `call_tool` asks first). The HTTP rate-limit gate asks it before it takes the tool's tokens."""
        found = self._lookup(name)
        return found is not None and self.permits(caller, _tool_target(found[1]))

    def visible_prompts(self, caller: Caller) -> list[types.Prompt]:
        prompts = self.catalog.current.prompts.values()
        return [r.prompt for r in prompts if self.shows(caller, Target("prompt", r.name, r.backend))]

    def visible_resources(self, caller: Caller) -> list[types.Resource]:
        resources = self.catalog.current.resources.values()
        return [r.resource for r in resources if self.shows(caller, Target("resource", r.uri, r.backend))]

    def visible_templates(self, caller: Caller) -> list[types.ResourceTemplate]:
        templates = self.catalog.current.templates
        return [
            t.template for t in templates if self.shows(caller, Target("template", t.template.uri_template, t.backend))
        ]

    # --- tools -----------------------------------------------------------------------------------

    def _lookup(self, name: str) -> tuple[ToolProvider, ProvidedTool] | None:
        for provider in self.providers:
            provided = provider.tools().get(name)
            if provided is not None:
                return provider, provided
        return None

    def _step_tool(self, name: str, exchange: Exchange) -> tuple[ToolProvider, ProvidedTool] | None:
        """A workflow-only tool (`aggregation.tools.<b>.workflow_only`), for the call of a workflow step that names it
        as written (`Exchange.may_reach`) alone: a client's own call, direct or through call_tool, and a step's name
        rendered from a template (the client's choice), get what an unknown name gets. A step's exchange, not the
        run's context variable: a task a step starts keeps that context, and code mode's script calls (clients'
        code) carry neither `step_of` nor `may_reach` even when a step started them."""
        if not _may_reach(name, exchange):
            return None
        catalog = self.catalog.current
        routed = catalog.workflow_only.get(name)
        backend_tools = next((p for p in self.providers if isinstance(p, BackendTools)), None)
        if routed is None or backend_tools is None:
            return None
        description = catalog.backend_descriptions.get(routed.backend, "")
        return backend_tools, ProvidedTool(name, routed.tool, routed.backend, routed.original_name, description)

    async def call_tool(
        self, caller: Caller, name: str, arguments: dict[str, Any] | None, exchange: Exchange
    ) -> types.CallToolResult:
        """Any provider's tool. `UnknownTool` for a name no provider serves, and `DeniedTool`, the same answer,
        when the policy refuses; an error result when the tool's backend is down, went away or failed to answer
        (`backend_failed`), or its answer passed `limits.max_result_bytes` (measured, or cut off while it arrived)."""
        if not self.watchers:
            return await self._call_tool(caller, name, arguments, exchange, None)
        with watched(self.watchers, Op("tools/call", caller, target=name, exchange=exchange)) as op:
            op.arguments = arguments
            op.result = await self._call_tool(caller, name, arguments, exchange, op)
            if op.result.is_error and op.outcome == "success":
                op.outcome = "application_error"
            return op.result  # type: ignore[no-any-return]

    async def _call_tool(
        self, caller: Caller, name: str, arguments: dict[str, Any] | None, exchange: Exchange, op: Op | None
    ) -> types.CallToolResult:
        found = self._lookup(name) or self._step_tool(name, exchange)
        if found is None:
            return await self._unavailable(caller, name, op, hidden=_may_reach(name, exchange))
        provider, provided = found
        if op is not None:
            op.backend = provided.source
        decision = await self._authorize_tool(caller, _tool_target(provided, arguments=arguments))
        if decision.approval is not None:
            try:
                exchange = await self.approvals.confirm(caller, exchange, provided.name, decision.approval)
            except NotApproved as refused:
                if op is not None:
                    op.outcome, op.error = "denied", "not_approved"
                return error_result(str(refused))
        started = time.perf_counter()
        try:
            result = await self._provide(provider, ToolCall(caller, provided, arguments, exchange, self))
        except (BackendUnavailable, CircuitOpen) as exc:
            result = error_result(str(exc))
            if op is not None:
                op.outcome, op.error = "failure", type(exc).__name__
        except MCPError as exc:
            exc = self._masked(provided.source, exc)
            if over_result_cap(exc):
                # Cut off while it arrived: as a parsed result over the cap, an error result the agent can act on
                # (ask for less); no failure of the backend's (its circuit did not count it either).
                result = error_result(naming_backend_once(provided.source, exc.error.message))
            elif backend_failed(exc):
                result = error_result(naming_backend_once(provided.source, exc.error.message))
                if op is not None:
                    op.outcome, op.error = "failure", str(exc.code)
            else:
                raise exc from None  # the client's request is at fault, or the backend answered with an error
        self.call_log.info(
            "tool call %s by %s: %s in %.1f ms",
            provided.name,
            caller.id,
            "error" if result.is_error else "ok",
            (time.perf_counter() - started) * 1000,
            extra={"caller": caller.id, "tool": provided.name, "source": provided.source},
        )
        for observer in self.observers:
            observer.tool_called(caller, provided, result, exchange)
        return result

    def _masked(self, backend: str, exc: MCPError) -> MCPError:
        """`exc` as the client and the audit may see it: a backend's error can echo the credentials the gateway
        sent it (`BackendConnection.secrets`: configured, fetched, rotated), masked in its message and data. `exc`
        itself when nothing was masked (a provider's own error keeps its type)."""
        connection = self.backends.get(backend)
        if connection is None:
            return exc
        secrets = connection.secrets
        message = masked_userinfo(redact(exc.error.message, secrets))
        data = masked_data(exc.error.data, secrets)
        if message == exc.error.message and data is exc.error.data:
            return exc
        return MCPError.from_error_data(exc.error.model_copy(update={"message": message, "data": data}))

    async def _unavailable(self, caller: Caller, name: str, op: Op | None, *, hidden: bool) -> types.CallToolResult:
        """A tool no provider serves now: why (its backend is down), but only to a caller the policy lets use
        it, judged on the tool as last served; any other caller gets the denial it gets while the backend is
        up (an unknown name's answer). `UnknownTool` for a name never served, with the names it likely meant.
        `hidden`: a step that may reach `name` as a workflow-only tool; for anyone else such a tool was never
        served (its backend's state would tell that it exists)."""
        why = next((w for p in self.providers if (w := p.why_unavailable(name)) is not None), None)
        if why is None and hidden:
            why = self.catalog.why_unavailable(name, hidden=True)
        if why is None:
            # Another replica's config, named only when no policy hides anything: a hidden tool, served here, gets no
            # such answer, so a made-up name getting one would tell the two apart (and name backends).
            explains = self.why_unknown is not None and self._hides_nothing()
            elsewhere = self.why_unknown(name) if explains and self.why_unknown is not None else None
            raise UnknownTool(name, elsewhere, [] if elsewhere else await self.meant(caller, name))
        known = self.catalog.known_tool(name) or (self.catalog.known_tool(name, hidden=True) if hidden else None)
        if known is not None:
            if op is not None:
                op.backend = known.backend
            await self._authorize_tool(caller, Target("tool", name, known.backend, "use", known.tool.annotations))
        elif not getattr(self.policy, "allows_everything", False):
            raise UnknownTool(name)  # a provider's own tool the policy cannot be asked about: tell nothing
        if op is not None:
            op.outcome, op.error = "failure", "unavailable"
        return error_result(why)

    async def meant(self, caller: Caller, name: str) -> list[str]:
        """The served tools the caller may use that an unknown `name` likely meant: the same name in another
        case, with other separators or none (`Time_Get_Current_Time`, `everything_get_sum` for
        `everything_get-sum`, `getSum`, spaces around it), or its name at its backend without the gateway's
        prefix, spelt so too. Tool names are exact, so the call itself still fails."""
        # The caller's view first, whatever the name: a hidden tool's name always has candidates (itself), so
        # building the view only then would make a made-up name's first answer the quicker one (an oracle).
        await self.usable_tools_async(caller)  # `may_use` then reads the caller's kept view
        candidates = self._folded_names().get(_name_key(name), [])
        if not candidates:
            return []
        # Filtered before cut: tools the caller may not use must not crowd out the ones it may.
        return self.may_use(caller, candidates)[:MEANT_MOST]

    def _folded_names(self) -> dict[str, list[str]]:
        """Every tool by its name and name at its source, as `_name_key` folds them, kept per catalogue: a wrong name
        costs a lookup, not a pass over 10k tools."""
        catalog = self.catalog.current
        if self._folded is None or self._folded[0] is not catalog:
            folded: dict[str, list[str]] = {}
            for name, provided in self._all_tools().items():
                for key in dict.fromkeys((_name_key(name), _name_key(provided.original_name))):
                    folded.setdefault(key, []).append(name)
            self._folded = (catalog, folded)
        return self._folded[1]

    async def _provide(self, provider: ToolProvider, call: ToolCall) -> types.CallToolResult:
        if self.limiter is None:
            return await provider.call(call)
        async with self.limiter.admitted(call.caller, call.tool.name, taken=call.exchange.limits_taken):
            return await provider.call(call)

    # --- prompts, resources, completions ---------------------------------------------------------

    async def get_prompt(
        self, caller: Caller, params: types.GetPromptRequestParams, exchange: Exchange
    ) -> types.GetPromptResult:
        with self._watch(Op("prompts/get", caller, target=params.name, exchange=exchange)):
            routed = self.catalog.current.prompts.get(params.name)
            absent = unknown_prompt(params.name)
            if routed is None:
                raise absent
            self._authorize(caller, Target("prompt", routed.name, routed.backend), absent)
            check_prompt_arguments(routed.name, routed.prompt, params.arguments)
            forwarded = params.model_copy(update={"name": routed.original_name, "request_state": None})
            return await self._forward(
                caller, exchange, routed.backend, types.GetPromptRequest(params=forwarded), types.GetPromptResult
            )

    async def read_resource(
        self, caller: Caller, params: types.ReadResourceRequestParams, exchange: Exchange
    ) -> types.ReadResourceResult:
        with self._watch(Op("resources/read", caller, target=str(params.uri), exchange=exchange)):
            routed = self._resource_routed(caller, str(params.uri))
            # The backend reads the URI the policy judged (its normal form), not another spelling of it.
            forwarded = params.model_copy(update={"uri": routed.uri, "request_state": None})
            return await self._forward(
                caller, exchange, routed.backend, types.ReadResourceRequest(params=forwarded), types.ReadResourceResult
            )

    async def complete(
        self, caller: Caller, params: types.CompleteRequestParams, exchange: Exchange
    ) -> types.CompleteResult:
        with self._watch(Op("completion/complete", caller, target=completion_target(params.ref), exchange=exchange)):
            ref = params.ref
            catalog = self.catalog.current
            if isinstance(ref, types.PromptReference):
                routed = catalog.prompts.get(ref.name)
                absent = unknown_prompt(ref.name)
                if routed is None:
                    raise absent
                self._authorize_completion(caller, Target("prompt", routed.name, routed.backend), absent)
                forwarded = params.model_copy(update={"ref": ref.model_copy(update={"name": routed.original_name})})
                return await self._forward(
                    caller, exchange, routed.backend, types.CompleteRequest(params=forwarded), types.CompleteResult
                )
            template = completion_template(catalog, ref.uri)
            absent = unknown_template(ref.uri)
            if template is None:
                raise uri_too_long(ref.uri) or absent
            uri_template = template.template.uri_template
            self._authorize_completion(caller, Target("template", uri_template, template.backend), absent)
            # The backend is asked about the template the policy judged (and knows it by that name).
            forwarded = params.model_copy(update={"ref": ref.model_copy(update={"uri": uri_template})})
            return await self._forward(
                caller, exchange, template.backend, types.CompleteRequest(params=forwarded), types.CompleteResult
            )

    def _authorize_completion(self, caller: Caller, target: Target, absent: MCPError) -> None:
        """Completions only for a prompt or template the caller is shown (may list it and get or read it) and
        may complete: their values come from the data it serves, so a caller kept from reading a template must
        not enumerate it through completions under a broad `complete` permit. Refused completion of an item the
        caller is shown says so (it hides nothing); any other refusal answers as the item's absence."""
        for operation in ("list", "use"):
            self._authorize(caller, dataclasses.replace(target, operation=operation), absent)
        completing = dataclasses.replace(target, operation="complete")
        decision = self._judged(caller, completing)
        if not decision.allowed:
            shown = MCPError(types.INVALID_REQUEST, explain(caller, completing, decision.reason))
            raise Denied(caller, completing, decision.reason, shown)

    async def subscribe(self, caller: Caller, uri: str, exchange: Exchange, *, subscribe: bool) -> None:
        method = "resources/subscribe" if subscribe else "resources/unsubscribe"
        with self._watch(Op(method, caller, target=uri, exchange=exchange)):  # audited: a refusal leaves a trace
            routed = self._resource_routed(caller, uri)
            backend = self._connection(routed.backend)
            if subscribe and self.limiter is not None:  # an unsubscribe reaches a backend only for a paid subscription
                await self.limiter.paid(caller, method, taken=exchange.limits_taken)
            await self.sessions.subscribe(caller, exchange, backend, routed.uri, subscribe)

    def may_follow(self, caller: Caller, uri: str, targets: Sequence[Target]) -> bool:
        """Whether a 2026-07-28 listen stream may follow `uri`'s updates for the caller. A refused URI is left
        out of the stream's promise, and logged and audited as the refused `resources/subscribe` it amounts to."""
        if all(self._judged(caller, target).allowed for target in targets):
            return True
        with self._watch(Op("resources/subscribe", caller, target=uri)) as op:
            if op is not None:
                op.outcome, op.error = "denied", "denied"
        return False

    async def set_log_level(self, caller: Caller, level: types.LoggingLevel, exchange: Exchange) -> None:
        with self._watch(Op("logging/setLevel", caller, exchange=exchange)):
            if self.limiter is not None:  # paid as the other forwarded requests (shared/rate_limits.py FORWARDED)
                await self.limiter.paid(caller, "logging/setLevel", taken=exchange.limits_taken)
            await self.sessions.set_level(caller, exchange, level)

    async def roots_changed(self, caller: Caller) -> None:
        await self.sessions.roots_changed(caller)

    def _resource_routed(self, caller: Caller, uri: str) -> RoutedUri:
        routed = resource_targets(self.catalog.current, uri)
        absent = resource_not_found(uri)
        if routed is None:
            raise uri_too_long(uri) or absent
        for target in routed.targets:
            self._authorize(caller, target, absent)
        return routed

    async def _forward(
        self, caller: Caller, exchange: Exchange, backend: str, request: Any, result_type: type[ResultT]
    ) -> ResultT:
        """A prompt, resource or completion request: a backend that cannot be reached is a protocol error.

        Sent as a tools/call is: without the client's progress token (on a shared backend session a token the
        client chose could name another caller's request there, whose callback would take this request's
        progress), the backend's progress relayed under the client's own token."""
        op = current() if self.watchers else None
        if op is not None:
            op.backend = backend
        params = request.params.model_copy(update={"meta": forwarded_meta(request.params.meta)})
        request = request.model_copy(update={"params": params})
        if self.limiter is not None:
            await self.limiter.paid(caller, request.method, taken=exchange.limits_taken)
        try:
            result = await self.send(caller, exchange, backend, request, result_type, exchange.progress_relay())
            if op is not None:
                op.result = result
            return result
        except (BackendUnavailable, CircuitOpen) as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from None
        except MCPError as exc:
            masked = self._masked(backend, exc)  # a backend's error may echo the credentials it was sent
            if masked is exc:
                raise
            raise masked from None

    # --- the guarded send ------------------------------------------------------------------------

    async def send(
        self,
        caller: Caller,
        exchange: Exchange,
        backend: str,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        progress: ProgressFnT | None = None,
    ) -> ResultT:
        """To `backend` on the session chosen for this caller, through the backend's guard.

        A 2026-07-28 retry goes where its round says, whatever `backend` is. Raises `InputRequired` when
        the client must answer something first.
        """
        if not self.watchers:
            connection = None if exchange.round is not None else self._connection(backend)
            session = await self.sessions.choose(caller, exchange, connection)
            return unstamped(await session.send(request, result_type, self.guard, progress))
        op = Op(request.method, caller, "backend", request_target(request), backend, exchange)
        with watched(self.watchers, op):
            connection = None if exchange.round is not None else self._connection(backend)
            session = await self.sessions.choose(caller, exchange, connection)
            result = unstamped(await session.send(request, result_type, self.guard, progress))
            op.result = result
            if isinstance(result, types.CallToolResult) and result.is_error:
                op.outcome = "application_error"
            return result

    def _connection(self, backend: str) -> BackendConnection:
        connection = self.backends.get(backend)
        if connection is None:
            raise BackendUnavailable(f"backend '{backend}' is not configured")
        return connection


def _may_reach(name: str, exchange: Exchange) -> bool:
    """Whether this call may reach `name` as a workflow-only tool: a step's call naming it as written."""
    return exchange.step_of is not None and name in exchange.may_reach


def _tool_target(
    provided: ProvidedTool, operation: Operation = "use", arguments: dict[str, Any] | None = None
) -> Target:
    """`arguments`: a call's, which a policy may decide on (Cedar's `context.arg_*`)."""
    return Target("tool", provided.name, provided.source, operation, provided.tool.annotations, arguments)
