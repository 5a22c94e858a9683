"""The ids of the requests a replica sends a client on a shared session (`sessions.store: redis`), and where the
client's answers and cancellations go.

Each replica's copy of a session numbers its requests to the client (elicitation, sampling, roots) from 1 (the
SDK's dispatcher), and the client's answer is a POST that a load balancer may send to any replica. So every such
request carries the asking replica's tag and the asking copy's number in its id (`vmcp-ask-<tag>-<copy>-<n>`,
`TaggedAsks`, installed by server/lazy_stream.py's transport), and an answer landing elsewhere is handed to the
tagged replica (`AskIds.relay`, server/session_relays.py), which gives it to that copy only: a copy that ended (idle
here, or ended with the session's deletion) and a new copy of the session restored since both number from 1, and a
late answer to the old one's question must not settle the new one's. A cancellation of a request not in flight
where it lands goes to every replica holding the session (`AskIds.relay_cancel`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from mcp.shared._stream_protocols import WriteStream
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId

from vmcp_opt.server.streams import WriteStreamWrapper

# The id of a request the gateway sends a client on a shared session: the asking replica's tag, the asking copy of
# the session, then the id the copy's dispatcher gave it.
ASK_PREFIX = "vmcp-ask-"
# An id with no copy (asked by a replica running the previous code, during a rolling upgrade) is still relayed to its
# tag: that replica's copy takes it; this code's copies, which all have a number, never do.
_ASK_ID = re.compile(r"^vmcp-ask-([0-9a-f]{16})-(?:([0-9]{1,20})-)?(.+)$")

Answer = JSONRPCResponse | JSONRPCError
# Hands a client's answer to the replica whose tag it carries: (tag, session id, the asking copy, the answer under
# its own id).
RelayAnswer = Callable[[str, str, str, Answer], Awaitable[None]]
# Hands a client's cancellation of a request not in flight here to the other replicas: (session id, it).
RelayCancel = Callable[[str, JSONRPCNotification], Awaitable[None]]


@dataclass(frozen=True)
class AskIds:
    """Ids of this replica's requests to clients (elicitation, sampling, roots) when sessions are shared.

    Each replica's copy of a session numbers its requests from 1 (the SDK's dispatcher), and the client's answer
    is a POST that a load balancer may send to any replica: untagged, it went to that replica's copy, which had
    asked nothing under that id (or another question), and the asking call waited out `timeouts.input`."""

    tag: str  # 16 hex, this process's own
    relay: RelayAnswer
    # The client's `notifications/cancelled` is a POST that may land on a replica other than the one running the
    # request: unrelayed, that replica's dispatcher ignored it and the call (and its backend call) ran on.
    relay_cancel: RelayCancel
    # Numbers the copies of sessions this process holds (each transport takes one as it connects).
    _copies: Iterator[int] = field(default_factory=lambda: itertools.count(1), compare=False)

    def next_copy(self) -> str:
        return str(next(self._copies))

    def tagged(self, copy: str, request_id: RequestId) -> str:
        return f"{ASK_PREFIX}{self.tag}-{copy}-{request_id}"


def asked_by(request_id: RequestId | None) -> tuple[str, str, RequestId] | None:
    """(tag, copy, the dispatcher's id) of a tagged id (copy "" when it names none); None for any other."""
    found = _ASK_ID.match(request_id) if isinstance(request_id, str) else None
    if found is None:
        return None
    own = found.group(3)
    return found.group(1), found.group(2) or "", int(own) if own.isascii() and own.isdigit() else own


class TaggedAsks(WriteStreamWrapper):
    """The server's write stream, tagging the ids of its requests to the client (and of its cancellations of
    them) before the transport stores and sends them."""

    def __init__(self, inner: WriteStream[SessionMessage], ids: AskIds, copy: str) -> None:
        super().__init__(inner)
        self._ids = ids
        self._copy = copy

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, JSONRPCRequest):
            tagged = message.model_copy(update={"id": self._ids.tagged(self._copy, message.id)})
            item = SessionMessage(tagged, metadata=item.metadata)
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            params = dict(message.params or {})
            if params.get("requestId") is not None:
                params["requestId"] = self._ids.tagged(self._copy, params["requestId"])
                item = SessionMessage(message.model_copy(update={"params": params}), metadata=item.metadata)
        await self._inner.send(item)
