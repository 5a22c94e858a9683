"""Rate limits answered as HTTP 429 with `Retry-After`, before the SDK starts the response.

The SDK's streamable HTTP transport sends its 200 and the SSE headers before a handler runs, so a refusal
raised by the router could only be a JSON-RPC error inside a 200 stream. This ASGI gate sits in front of
the SDK: for a `tools/call` POST it reads the method and tool name from the body, takes the call's tokens
(the caller's, the tool's and the shared bucket, `RateLimiter.admit`) and either refuses with 429, the
JSON-RPC error in the body (`data: {limit, retry_after}`), or marks the request's scope as paid. Admission
copies the mark to the `Exchange` (`limits_taken`), and the router then does not take the outer call's
tokens a second time; the calls made inside it (`call_tool`'s target, workflow steps) still pay their
own tool's bucket there. Over stdio there is no gate: the router takes the tokens and refuses with the
JSON-RPC error, and telemetry hears of it through `RateLimiter.on_refused` (server/stdio.py sets it).

A call of a tool with a bucket of its own (`rate_limits.per_tool`) is first put to the router's policy
(`may_call`, with the caller as the verified identity in the scope describes it: what the policy decides
on). One the policy refuses pays only the caller's and the shared bucket, and the scope is not marked: the
router then refuses it before taking any token; were it allowed there after all (the catalogue changed in
between), the router takes all of its tokens itself. Without that, a caller forbidden a tool could empty
its bucket, when shared by every caller, and so take the tool away from everyone.

Whose budget: a verified subject (the same on every replica, `subject_key`), else the client's address
(the one the session quota counts: the peer's, or X-Forwarded-For's behind one of `server.trusted_proxies`).
Not the session nor an unverified credential: a client picks those freely (a new session per call, a
2026-07-28 request without one, any Authorization header) and would get a fresh bucket each time.

A refused call never reaches the router, so no operation watcher hears of it: the gate calls `refused`
instead (server/http.py passes the gateway's `Telemetry.rate_limited`, which counts and audits each refusal),
as authentication reports its refusals; the gate knows nothing of telemetry.

The other requests forwarded to a backend (shared/rate_limits.py `FORWARDED`: `resources/read`, `prompts/get`,
`completion/complete`, `resources/subscribe`, `logging/setLevel`) pay here too, the caller's and the shared bucket,
and are refused alike, the method in the tool's place. Every other request is free, and its scope is marked as settled too when
its method is sure (`_settled`; a GET or DELETE has none): the requests the gateway replays into a session it
restores, or relays from another replica (server/session_restore.py: the log level, each subscription), carry the
scope of a client's request here, and must not charge the caller again for subscriptions it paid for once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.auth.caller import address_key, subject_key
from vmcp_opt.auth.identity import SCOPE_KEY, Identity
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import LimitReached
from vmcp_opt.server.admission import LIMITS_TAKEN_KEY
from vmcp_opt.server.post_body import GONE, PostBody, reading_body
from vmcp_opt.server.sessions import client_address, json_rpc_error
from vmcp_opt.shared.rate_limits import FORWARDED, RateLimiter, Refused

TOO_MANY_REQUESTS = 429

logger = logging.getLogger(__name__)

# Whether the policy lets this caller call the tool now (the router's `may_call`).
MayCall = Callable[[Caller, str], bool]


class RateLimitGate:
    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        max_body_bytes: int,
        refused: Refused | None = None,
        may_call: MayCall | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.refused = refused
        self.may_call = may_call  # None: every call pays its tool's bucket here
        if refused is not None:
            limiter.on_refused = refused  # the inner calls the router refuses are counted and audited too
        self._log = ThrottledLog(logger, 60.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            if scope["type"] == "http":
                scope[LIMITS_TAKEN_KEY] = True  # a GET or DELETE carries no request to pay for
            await self.app(scope, receive, send)
            return
        async with reading_body(scope, receive, self.max_body_bytes) as (receive, body):
            if body is GONE:
                return
            if isinstance(body, PostBody) and await self._refused(scope, body, send):
                return
            await self.app(scope, receive, send)

    async def _refused(self, scope: Scope, body: PostBody, send: Send) -> bool:
        """Whether the request was refused (answered 429 here); else what it owes is taken, and the scope marked
        when the SDK will run the request it was taken for."""
        envelope = body.envelope()
        call = tool_call_of(envelope)
        if call is not None:
            return await self._refused_call(scope, body, send, call)
        forwarded = forwarded_of(envelope)
        if forwarded is None:
            if _free(envelope) and _settled(body, envelope):
                scope[LIMITS_TAKEN_KEY] = True
            return False
        request_id, method = forwarded
        key = self.caller_key(scope)
        try:
            await self.limiter.admit(key, method, of_tool=False)
        except LimitReached as refused:
            self._tell_refused(key, scope, refused.setting, method, method)
            await refuse(send, request_id, refused)
            return True
        if _settled(body, envelope):
            scope[LIMITS_TAKEN_KEY] = True
        return False

    async def _refused_call(self, scope: Scope, body: PostBody, send: Send, call: tuple[str | int, str]) -> bool:
        """Whether a tools/call was refused (answered 429 here); else its tokens are taken, and the scope marked."""
        request_id, tool = call
        key = self.caller_key(scope)
        permitted = self._permitted(key, scope, tool)
        try:
            await self.limiter.admit(key, tool, of_tool=permitted)
        except LimitReached as refused:
            self._tell_refused(key, scope, refused.setting, tool)
            await refuse(send, request_id, refused)
            return True
        if permitted and _paid_for(body, call):
            scope[LIMITS_TAKEN_KEY] = True
        return False

    def _permitted(self, key: str, scope: Scope, tool: str) -> bool:
        """Whether the call may take its tool's tokens: the policy lets it run. Asked only of a tool with a bucket
        of its own; any other call's buckets are the same either way."""
        if self.may_call is None or not self.limiter.limits_tool(tool):
            return True
        return self.may_call(policy_caller(key, scope), tool)

    def _tell_refused(self, key: str, scope: Scope, setting: str, tool: str, method: str = "tools/call") -> None:
        """Telemetry hears of the refusal; its failure is logged (throttled), never the client's: the answer
        stays the 429 (raised here, it became a 500 with no Retry-After)."""
        if self.refused is None:
            return
        try:
            self.refused(refused_caller(key, scope), setting, tool, method)
        except Exception:
            self._log.warning("refused", "rate limit: telemetry of a refused call failed", exc_info=True)

    def caller_key(self, scope: Scope) -> str:
        identity = scope.get(SCOPE_KEY)
        if (
            isinstance(identity, Identity)
            and identity.subject
            and identity.method in (Identification.TOKEN, Identification.API_KEY)
        ):
            return subject_key(identity.method, identity.subject)
        return address_key(client_address(scope))


def refused_caller(key: str, scope: Scope) -> Caller:
    """The refused caller as far as the gate knows it: no session yet (the SDK has not seen the request), so its
    id is the budget's key, with the verified subject and the address that key comes from."""
    identity = scope.get(SCOPE_KEY)
    address = client_address(scope)
    if isinstance(identity, Identity) and identity.method in (Identification.TOKEN, Identification.API_KEY):
        return Caller(key, identity.method, "", subject=identity.subject, address=address)
    return Caller(key, Identification.ANONYMOUS, "", address=address)


def policy_caller(key: str, scope: Scope) -> Caller:
    """The caller as the policy sees it: the verified identity in the scope, as admission fills it in
    (server/admission.py), so its principal, all a policy decides on, is the one the router asks about."""
    identity = scope.get(SCOPE_KEY)
    if not isinstance(identity, Identity):
        return Caller(key, Identification.ANONYMOUS, "", address=client_address(scope))
    return Caller(key, identity.method, "", address=client_address(scope), **identity.caller_fields())


def _paid_for(body: PostBody, call: tuple[str | int, str]) -> bool:
    """Whether the call the tokens were taken for is the one the SDK will run. A body's head (post_body.py) may
    differ from the whole only where the client repeats `params` or its `name` past the head: its own tool's tokens
    then not taken by the router. A body that spells each once (a key cannot be spelled otherwise than in its
    quotes, or by a `\\u` escape) is as its head says; any other is parsed whole to be sure."""
    raw = body.raw
    if not body.from_head or (b"\\u" not in raw and raw.count(b'"params"') == 1 and raw.count(b'"name"') == 1):
        return True
    return tool_call_of(body.whole()) == call


def _free(envelope: Any) -> bool:
    """Whether the request owes no token: a method named, neither a tool call nor one forwarded (a forwarded one
    the gate could not take, its id unusual, is the router's to take)."""
    method = envelope.get("method") if isinstance(envelope, dict) else None
    return isinstance(method, str) and method != "tools/call" and method not in FORWARDED


def _settled(body: PostBody, envelope: dict[str, Any]) -> bool:
    """Whether the request the SDK will run has the method the gate judged by `envelope` (a tool call's name
    is `_paid_for`'s): sure unless the body, read from its head, may spell `method` again past it."""
    method = envelope["method"]
    raw = body.raw
    if not body.from_head or (b"\\u" not in raw and raw.count(b'"method"') == 1):
        return True
    whole = body.whole() if method in FORWARDED else None  # a free one is not worth the parse
    return isinstance(whole, dict) and whole.get("method") == method


def forwarded_of(envelope: Any) -> tuple[str | int, str] | None:
    """The request id and method of a request forwarded to a backend that is no tool call (`FORWARDED`); None
    for anything else (or an id the SDK may read otherwise: the router then takes the tokens)."""
    if not isinstance(envelope, dict) or envelope.get("method") not in FORWARDED:
        return None
    request_id = envelope.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    return request_id, envelope["method"]


def tool_call_of(envelope: Any) -> tuple[str | int, str] | None:
    """The request id and tool name of a `tools/call` request (its envelope, post_body.py); None for anything
    else (or malformed input, which the SDK answers)."""
    message = envelope if isinstance(envelope, dict) and envelope.get("method") == "tools/call" else None
    if message is None:
        return None
    request_id, params = message.get("id"), message.get("params")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int) or not isinstance(params, dict):
        return None
    name = params.get("name")
    return (request_id, name) if isinstance(name, str) else None


async def refuse(send: Send, request_id: str | int, refused: LimitReached) -> None:
    data = refused.error.data if isinstance(refused.error.data, dict) else {}
    retry_after = max(1, math.ceil(float(data.get("retry_after", 1))))
    await json_rpc_error(
        send,
        TOO_MANY_REQUESTS,
        refused.error.code,
        refused.error.message,
        data,
        [(b"retry-after", str(retry_after).encode())],
        request_id=request_id,
    )
