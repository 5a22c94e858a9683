"""The authorization hook the router asks before it routes or lists anything.

`AllowAll` is the policy until authorization is configured; a real policy (Cedar) implements the same
`decide`. Handlers never ask: the router does, for calls and for every item of every list, so what a
caller cannot call it does not see either (`find_tool` included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.auth import Caller
from vmcp_opt.display import shorten

TargetKind = Literal["tool", "prompt", "resource", "template"]


@dataclass(frozen=True)
class Target:
    """What a request is about: a tool, prompt, resource or template, and the source that serves it."""

    kind: TargetKind
    name: str  # the name (or URI) the caller uses
    source: str  # the backend, or the gateway's own provider ("vmcp" for meta-tools)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


class Policy(Protocol):
    def decide(self, caller: Caller, target: Target) -> Decision: ...


class AllowAll:
    """Every caller may see and call everything (no authorization configured)."""

    allows_everything = True

    def decide(self, caller: Caller, target: Target) -> Decision:
        return ALLOW


class Denied(MCPError):
    """The policy refused; the message says who, what, and the policy's reason."""

    def __init__(self, caller: Caller, target: Target, reason: str) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(
            types.INVALID_REQUEST,
            f"not permitted: caller '{caller.id}' may not use {target.kind} '{shorten(target.name)}'{because}",
        )
        self.caller = caller
        self.target = target
