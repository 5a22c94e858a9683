"""The front request a routed call answers: how to reach its client while the call runs.

Made by admission next to the `Caller`. A call that no client request drives (a workflow step started
by the gateway itself) uses `Exchange.internal()`: no progress, no questions to a client. A workflow's
steps carry their run's exchange marked with the workflow's name (`step_of`), and the workflow-only tools the
step names literally (`may_reach`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import ProgressFnT

from vmcp_opt.backends.request_logs import LEVELS, RequestLogs
from vmcp_opt.routing.round_trips.state import Round


@dataclass(frozen=True)
class Exchange:
    method: str
    # The front session of this request: server-to-client messages of the call go out on it.
    session: ServerSession | None = None
    request_id: types.RequestId | None = None
    # A 2026-07-28 retry: the round it continues (its unsealed requestState) and the client's answers.
    round: Round | None = None
    input_responses: types.InputResponses | None = None
    meta: types.RequestParamsMeta | None = None
    # The client's HTTP request headers (read-only; None over stdio), for `backends[].auth.passthrough_headers`.
    headers: Mapping[str, str] | None = None
    # The request's rate-limit tokens were taken before the SDK saw it (HTTP: server/rate_limit_gate.py).
    limits_taken: bool = False
    # A workflow's step: the workflow whose run made this call (workflows/provider.py `step_exchange`), not
    # the client; None for the client's own calls (directly or through call_tool). Usage learning counts
    # only the latter.
    step_of: str | None = None
    # The workflows running above this call, outermost first (`step_exchange` appends): a workflow that
    # would re-enter one of them, or nest deeper than workflows/provider.py allows, is refused.
    workflow_chain: tuple[str, ...] = ()
    # The workflow-only tools (`aggregation.tools.<b>.workflow_only`) this call may reach: those the step making it
    # names literally (workflows/provider.py `literal_tools`). Empty for a client's call and for what a call started
    # carries (`inner`): a step's template, or a script, may name any tool its client chooses.
    may_reach: frozenset[str] = frozenset()

    @classmethod
    def internal(cls, method: str = "tools/call") -> Exchange:
        return cls(method=method)

    def inner(self, *, modern: bool, chain: str, step_of: str | None) -> Exchange:
        """What a call made on this request's behalf by a run of the gateway's (a workflow's step, a code-mode
        script's call) carries: `chain` appended to `workflow_chain` (so the run cannot re-enter itself), `step_of`
        (None: usage learning counts the call), no progress token (several calls' progress would interleave and
        go backwards) nor a retry's round; and for a `modern` (2026-07-28) caller no session, so the call takes a
        backend's shared session and cannot hand a backend's question back to the client mid-run (a 2025-11-25
        caller's session stays: its backend's questions reach the client as in any call)."""
        meta = {k: v for k, v in dict(self.meta or {}).items() if k not in ("progressToken", "progress_token")}
        return dataclasses.replace(
            self,
            session=None if modern else self.session,
            meta=meta or None,  # type: ignore[arg-type]
            round=None,
            input_responses=None,
            step_of=step_of,
            workflow_chain=(*self.workflow_chain, chain),
            may_reach=frozenset(),
        )

    def progress_relay(self) -> ProgressFnT | None:
        """Relays a backend's progress to the client under the client's own progress token."""
        raw: dict[str, Any] = dict(self.meta or {})
        token = raw.get("progress_token", raw.get("progressToken"))
        session, request_id = self.session, self.request_id
        if session is None or not isinstance(token, str | int):
            return None

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            related = str(request_id) if request_id is not None else None
            await session.send_progress_notification(token, progress, total, message, related_request_id=related)

        return relay

    def log_relay(self, set_level: types.LoggingLevel | None) -> RequestLogs | None:
        """Relays the log messages a backend's shared session sends for this request's call, at the level the
        request carries (a 2026-07-28 client's `_meta`), else at `set_level` (a 2025-11-25 client's
        `logging/setLevel`); None when the client asked for none."""
        if self.session is None or self.request_id is None:
            return None
        level = self.meta.get(types.LOG_LEVEL_META_KEY, set_level) if self.meta else set_level
        if level not in LEVELS:
            return None
        return RequestLogs(self.session, self.request_id, level)


# Not forwarded: the backend call gets a progress token of its own. Unprefixed keys (`traceparent`, a client's own)
# are the client's to send and go on as they are.
_NOT_FORWARDED_META = frozenset({"progressToken", "progress_token"})
# The spec reserves for MCP every `_meta` key prefix whose second label is `modelcontextprotocol` or `mcp`
# (`io.modelcontextprotocol/`, `dev.mcp/`, `org.modelcontextprotocol.api/`; not `com.example.mcp/`). Such a key asks
# something of the protocol, and the gateway relays none on purpose: the 2026-07-28 envelope (protocolVersion,
# clientInfo, clientCapabilities) is its own session's (a 2025-11-25 session refuses a request carrying a client's),
# logLevel it sets per call itself (backends/request_logs.py), and it relays no tasks: a client's
# `io.modelcontextprotocol/related-task` on a backend session the gateway shares made a task-capable backend hold
# the call for a task no one follows, never answering, so any caller could open the backend's circuit for everyone.
# A reserved key a later spec adds is dropped too, until the gateway implements it.
_RESERVED_SECOND_LABELS = frozenset({"modelcontextprotocol", "mcp"})


def _reserved(key: str) -> bool:
    """Whether `key` has a prefix MCP reserves (compared without case: a backend may not be strict about it)."""
    prefix, slash, _ = key.partition("/")
    labels = prefix.lower().split(".")
    return bool(slash) and len(labels) > 1 and labels[1] in _RESERVED_SECOND_LABELS


def forwarded_meta(meta: types.RequestParamsMeta | None) -> types.RequestParamsMeta | None:
    """The client's `_meta` a backend call carries: without its progress token and the keys MCP reserves."""
    if not meta:
        return None
    kept = {key: value for key, value in dict(meta).items() if key not in _NOT_FORWARDED_META and not _reserved(key)}
    return kept or None  # type: ignore[return-value]
