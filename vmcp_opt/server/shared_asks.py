"""The ids of the requests a replica sends a client on a shared session (`sessions.store: redis`), and where the
client's answers and cancellations go.

Each replica's copy of a session numbers its requests to the client (elicitation, sampling, roots) from 1 (the
SDK's dispatcher), and the client's answer is a POST that a load balancer may send to any replica. So every such
request carries the asking replica's tag in its id (`vmcp-ask-<tag>-<n>`, `TaggedAsks`, installed by
server/lazy_stream.py's transport), and an answer landing elsewhere is handed to the tagged replica
(`AskIds.relay`, server/shared_sessions.py); a cancellation of a request not in flight where it lands goes to
every replica holding the session (`AskIds.relay_cancel`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mcp.shared._stream_protocols import WriteStream
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId

from vmcp_opt.server.streams import WriteStreamWrapper

# The id of a request the gateway sends a client on a shared session: the asking replica's tag, then the id the
# session's dispatcher gave it.
ASK_PREFIX = "vmcp-ask-"
_ASK_ID = re.compile(r"^vmcp-ask-([0-9a-f]{16})-(.+)$")

Answer = JSONRPCResponse | JSONRPCError
# Hands a client's answer to the replica whose tag it carries: (tag, session id, the answer under its own id).
RelayAnswer = Callable[[str, str, Answer], Awaitable[None]]
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

    def tagged(self, request_id: RequestId) -> str:
        return f"{ASK_PREFIX}{self.tag}-{request_id}"


def asked_by(request_id: RequestId | None) -> tuple[str, RequestId] | None:
    """(tag, the dispatcher's id) of a tagged id; None for any other."""
    found = _ASK_ID.match(request_id) if isinstance(request_id, str) else None
    if found is None:
        return None
    own = found.group(2)
    return found.group(1), int(own) if own.isascii() and own.isdigit() else own


class TaggedAsks(WriteStreamWrapper):
    """The server's write stream, tagging the ids of its requests to the client (and of its cancellations of
    them) before the transport stores and sends them."""

    def __init__(self, inner: WriteStream[SessionMessage], ids: AskIds) -> None:
        super().__init__(inner)
        self._ids = ids

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, JSONRPCRequest):
            tagged = message.model_copy(update={"id": self._ids.tagged(message.id)})
            item = SessionMessage(tagged, metadata=item.metadata)
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            params = dict(message.params or {})
            if params.get("requestId") is not None:
                params["requestId"] = self._ids.tagged(params["requestId"])
                item = SessionMessage(message.model_copy(update={"params": params}), metadata=item.metadata)
        await self._inner.send(item)
