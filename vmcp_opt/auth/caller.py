"""The principal of a request: made once by the transport's admission step, read by everything below it.

Nothing downstream of admission looks at transport objects (the SDK's connection, HTTP headers) to learn
who called: the router, its policy hook, per-caller backend sessions and usage learning all key on a
`Caller`. Authentication (vmcp_opt/auth/authenticators.py, run by the HTTP transport) fills `subject`,
`groups`, `roles`, `client_id`, `scopes` and `claims` from a verified token or API key; over stdio the local
OS user is the subject. A caller's `id` still says which party it is for sessions and usage learning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import anyio
import mcp_types as types

CloseHook = Callable[[], Awaitable[None]]


class Identification(StrEnum):
    """How the gateway knows a caller."""

    ANONYMOUS = "anonymous"  # a single request with nothing that ties it to others
    SESSION = "session"  # a transport session: an MCP session id over HTTP, or the stdio pipe
    CREDENTIAL = "credential"  # the SHA-256 digest of the credential it presented (no verification)
    TOKEN = "token"  # a verified OAuth access token (JWT)
    API_KEY = "api_key"  # a known API key


class CallerLifetime:
    """Ends when the caller's connection closes; what holds resources for the caller registers to be told.

    A caller that is one request long (stateless HTTP) has no lifetime: nothing may outlive its request.
    """

    def __init__(self) -> None:
        self._hooks: list[CloseHook] = []
        self.ended = False

    def on_end(self, hook: CloseHook) -> None:
        self._hooks.append(hook)

    async def end(self) -> None:
        """Run every hook once, shielded: a closing connection must release what it held."""
        if self.ended:
            return
        self.ended = True
        hooks, self._hooks = self._hooks, []
        with anyio.CancelScope(shield=True):
            for hook in hooks:
                await hook()


@dataclass(frozen=True, eq=False)
class Caller:
    """Who sent a request, and what their client can do.

    `id` is stable for as long as the caller is the same party: the same transport session, or the same
    credential. It is safe to log (never a secret: session ids and credentials appear only as digests).
    """

    id: str
    identified_by: Identification
    protocol_version: str
    client_name: str | None = None
    client_version: str | None = None
    capabilities: types.ClientCapabilities | None = None
    # The client can be sent requests outside a call of its own (a 2025-11-25 session with a stream).
    back_channel: bool = False
    # Filled by authentication: who the verified credential (or the local OS user) says the caller is.
    subject: str | None = None
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lifetime: CallerLifetime | None = None
    # The network address the caller's (first) request came from; None over stdio.
    address: str | None = None
    # The caller's verified bearer token (auth/identity.py `BearerToken`, masked in any repr): exchanged for
    # a backend's own token when that backend's `auth.type` is token_exchange; never forwarded as it is.
    token: Any = None

    @property
    def known(self) -> bool:
        """Whether two requests with this id come from the same party (anonymous ones never do)."""
        return self.identified_by is not Identification.ANONYMOUS

    @property
    def can_answer_requests(self) -> bool:
        """The client declared sampling, elicitation or roots: a backend may need to ask it something."""
        c = self.capabilities
        return c is not None and any(x is not None for x in (c.sampling, c.elicitation, c.roots))

    @property
    def principal(self) -> tuple[Any, ...]:
        """What a policy may decide on: equal principals get equal decisions (the router caches by it)."""
        return (self.subject, self.groups, self.roles, self.client_id, self.scopes, self.subject is None)

    def __repr__(self) -> str:
        return f"Caller({self.id!r}, {self.identified_by.value}, subject={self.subject!r}, client={self.client_name!r})"


# How a caller is verified, such that its subject is the same party on every replica (its budget key: `caller_key`).
VERIFIED = frozenset({Identification.TOKEN, Identification.API_KEY})


def caller_key(caller: Caller) -> str:
    """Whose budget a call spends: the key the HTTP gate charges a direct call to (server/rate_limit_gate.py).

    A verified subject is the same party on every replica (its `Caller.id` is not: a session's id, or a
    digest under a key of that process), so it is keyed by a digest of how it was verified and its subject.
    Anyone else over HTTP by its address: its `Caller.id` is a session or an unverified credential, which
    a client picks freely, so a tool reached through `call_tool` from a new session each time would get a
    fresh per-caller bucket each time. Over stdio (no address) the one client is its `Caller.id`."""
    if caller.subject is not None and caller.identified_by in VERIFIED:
        return subject_key(caller.identified_by, caller.subject)
    if caller.address is not None:
        return address_key(caller.address)
    return caller.id


def address_key(address: str) -> str:
    """An unverified HTTP caller's budget key: the client's address (X-Forwarded-For's behind a trusted proxy)."""
    return f"address:{address}"


def subject_key(how: Identification, subject: str) -> str:
    """A verified subject's budget key: a digest of how it was verified and who it is."""
    digest = hashlib.sha256(f"{how.value}\0{subject}".encode()).hexdigest()[:32]
    return f"subject:{digest}"
