"""What the router makes of a backend's answer before its client sees it, and what it checks before asking.

A tools/call a backend failed to answer (gone, timed out, garbled, an HTTP 5xx, an invalid result) becomes an
error result an agent reads, not a protocol error (`backend_failed`); a 2026-07-28 backend's own `serverInfo`
stamp is taken off its results, so the gateway's goes on (`unstamped`); a prompt's required arguments are
checked here, since a Python SDK backend answers a missing one with "Internal server error".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.backends.errors import failed_to_answer
from vmcp_opt.display import shorten

ResultT = TypeVar("ResultT", bound=BaseModel)
# A backend that went away mid-call: for a tool call, an error result the agent can read, not a protocol error.
_GONE = (types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT)
# The `_meta` key a 2026-07-28 server stamps its results with (its name and version).
_SERVER_INFO = "io.modelcontextprotocol/serverInfo"


def unstamped(result: ResultT) -> ResultT:
    """`result` without the backend's `serverInfo` stamp (2026-07-28), so the gateway's own goes on it: a client
    saw the server it talks to change name from one answer to the next, and learnt the backends behind it."""
    meta = getattr(result, "meta", None)
    if not meta or _SERVER_INFO not in meta:
        return result
    return result.model_copy(update={"meta": {k: v for k, v in meta.items() if k != _SERVER_INFO} or None})


def backend_failed(exc: MCPError) -> bool:
    """Whether a tool call's error is the backend's failure to answer: it went away, timed out, or gave an answer
    that is none (garbled, an HTTP 5xx, a result failing validation; the guard counted each against its
    circuit). An agent sees such a call as a timed-out one, an error result it can read and act on: a protocol
    error often ends the client's turn, and the agent never learns which tool failed or why."""
    return exc.code in _GONE or failed_to_answer(exc)


def check_prompt_arguments(name: str, prompt: types.Prompt, given: Mapping[str, str] | None) -> None:
    """A prompt's required arguments are there: a Python SDK backend answers a missing one with "Internal
    server error" (and a traceback in its log), which tells the client nothing. Others are the backend's to judge."""
    missing = [arg.name for arg in prompt.arguments or [] if arg.required and arg.name not in (given or {})]
    if missing:
        names = ", ".join(f"'{shorten(arg, 100)}'" for arg in missing[:16])
        raise MCPError(types.INVALID_PARAMS, f"prompt '{shorten(name)}': missing required argument(s) {names}")


def naming_backend_once(backend: str, message: str) -> str:
    """`message` naming the backend once (the guard's own messages already do)."""
    return message if f"backend '{backend}'" in message else f"backend '{backend}': {message}"
