"""The principal of a request: made once by the transport's admission step, read by everything below it.

Nothing downstream of admission looks at transport objects (the SDK's connection, HTTP headers) to learn
who called: the router, its policy hook, per-caller backend sessions and usage learning all key on a
`Caller`. Authentication (tokens, API keys) will fill `subject` and `claims`; today a caller is known by
its session, by a digest of the credential it carries, or not at all.
"""

from __future__ import annotations

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
    CREDENTIAL = "credential"  # the SHA-256 digest of the credential it presented (no verification yet)


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
    # Filled by authentication: the token's subject and its claims.
    subject: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lifetime: CallerLifetime | None = None

    @property
    def known(self) -> bool:
        """Whether two requests with this id come from the same party (anonymous ones never do)."""
        return self.identified_by is not Identification.ANONYMOUS

    @property
    def can_answer_requests(self) -> bool:
        """The client declared sampling, elicitation or roots: a backend may need to ask it something."""
        c = self.capabilities
        return c is not None and any(x is not None for x in (c.sampling, c.elicitation, c.roots))

    def __repr__(self) -> str:
        return f"Caller({self.id!r}, {self.identified_by.value}, client={self.client_name!r})"
