"""The authorization hook the router asks before it routes or lists anything.

`AllowAll` is the policy until authorization is configured; a real policy (Cedar) implements the same
`decide`. Handlers never ask: the router does, for calls and for every item of every list, so what a
caller cannot call it does not see either (`find_tool` included).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import DEFAULT_MAX_URI_LENGTH

from vmcp_opt.auth import Caller
from vmcp_opt.display import shorten
from vmcp_opt.routing.resource_uris import MalformedResourceUri, normalized_uri

if TYPE_CHECKING:
    from vmcp_opt.aggregation.catalog import Catalog, RoutedTemplate

TargetKind = Literal["tool", "prompt", "resource", "template"]
# list: shown in a list (or by find_tool); use: called, read, fetched, subscribed; complete: completions for it.
Operation = Literal["list", "use", "complete"]


class PolicyLoadError(Exception):
    """`<file>:<line>: <reason>`: the policy cannot be used, and the gateway does not start. Here, not in
    auth/cedar.py, so that catching it does not import cedarpy (loaded only when policies are configured)."""


@dataclass(frozen=True)
class Target:
    """What a request is about: a tool, prompt, resource or template, the source that serves it, and what the
    caller wants to do with it."""

    kind: TargetKind
    name: str  # the name (or URI) the caller uses
    source: str  # the backend, or the gateway's own provider ("vmcp" for meta-tools)
    operation: Operation = "use"
    # A tool's annotations (readOnlyHint, destructiveHint...), for policies that decide on them.
    annotations: types.ToolAnnotations | None = field(default=None, compare=False, hash=False)
    # A tool call's arguments, for policies that decide on them (Cedar's `context.arg_*`); None when judged
    # without a call (lists, views). Never in a repr: they may hold secrets.
    arguments: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # An allowed call the user must approve first (routing/approval.py): what to tell them.
    approval: str | None = None


ALLOW = Decision(True)


class Policy(Protocol):
    def decide(self, caller: Caller, target: Target) -> Decision: ...


@runtime_checkable
class BatchPolicy(Protocol):
    """A policy whose decisions depend only on `principal_key(caller)` and the target: the router then asks it
    once per principal for a whole catalogue (`decide_all`, targets judged without arguments) and keeps the
    answer until the catalogue changes. `decide` of a call may still read the call's `Target.arguments`."""

    def decide(self, caller: Caller, target: Target) -> Decision: ...

    def decide_all(self, caller: Caller, targets: Sequence[Target]) -> list[Decision]: ...

    def principal_key(self, caller: Caller) -> Hashable: ...


class AllowAll:
    """Every caller may see and call everything (no authorization configured)."""

    allows_everything = True

    def decide(self, caller: Caller, target: Target) -> Decision:
        return ALLOW


class Denied(MCPError):
    """The policy refused `caller` `target`. The caller is answered exactly as if the item did not exist (`absent`:
    the very error a name nothing serves gets), so probing names finds nothing hidden from it (no oracle); the
    operator learns of the refusal from the router's log line and the audit record (outcome `denied`)."""

    def __init__(self, caller: Caller, target: Target, reason: str, absent: MCPError) -> None:
        # Not super(): a subclass that is also the absent item's own error type (the router's `DeniedTool`) takes
        # that error's answer as it is.
        MCPError.__init__(self, absent.code, absent.message, absent.data)
        self.caller = caller
        self.target = target
        self.reason = reason

    @property
    def explanation(self) -> str:
        """Who may not do what, and the policy's reason: only for a caller who may see the item anyway."""
        return explain(self.caller, self.target, self.reason)


def explain(caller: Caller, target: Target, reason: str) -> str:
    because = f": {reason}" if reason else ""
    what = f"{target.operation} {target.kind} '{shorten(target.name)}'"
    return f"not permitted: caller '{caller.id}' may not {what}{because}"


# What a name nothing serves gets; a refused caller gets the same (`Denied`). A tool's is the router's `UnknownTool`.
RESOURCE_NOT_FOUND = -32002


def unknown_prompt(name: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"Unknown prompt: '{shorten(name)}'")


def unknown_template(uri: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"Unknown resource template: '{shorten(uri)}'")


def resource_not_found(uri: str) -> MCPError:
    return MCPError(RESOURCE_NOT_FOUND, f"Resource not found: '{shorten(uri)}'", {"uri": shorten(uri, 512)})


@dataclass(frozen=True)
class RoutedUri:
    """Where a resource URI goes: its backend, the URI the backend is sent (the one judged) and what a caller
    must be allowed to read it."""

    backend: str
    uri: str
    targets: list[Target]


def resource_targets(catalog: Catalog, uri: str) -> RoutedUri | None:
    """The backend `uri` routes to and what a caller must be allowed to read it: the resource, and the template
    it matches when it is not a listed resource (a policy forbidding a template forbids the URIs it serves, not
    only its listing); None when nothing serves it.

    Judged, matched and forwarded in normal form (routing/resource_uris.py): judged as sent, `files://%73ecret`
    passed a forbid on `files://secret` that the backend then served. A listed URI not itself in normal form is
    forwarded as listed (the backend knows it so) and judged by both spellings;
    `MalformedResourceUri` for a URI with no normal form."""
    listed = catalog.resources.get(uri)
    if listed is not None:
        names = dict.fromkeys((uri, _normal_or_same(uri)))
        return RoutedUri(listed.backend, uri, [Target("resource", name, listed.backend) for name in names])
    if len(uri) > DEFAULT_MAX_URI_LENGTH:
        return None  # no template matches it (the router says why): not normalised, ~21,000 escapes at this length
    normal = normalized_uri(uri)
    listed = catalog.resources.get(normal)
    if listed is not None:
        return RoutedUri(listed.backend, normal, [Target("resource", normal, listed.backend)])
    # A template's own text, read as it is listed, is judged as that template too: `{?q}` never matches itself.
    template = catalog.matching_template(normal) or catalog.template_named(normal)
    if template is None:
        return None
    served_by = template.backend
    return RoutedUri(
        served_by,
        normal,
        [Target("resource", normal, served_by), Target("template", template.template.uri_template, served_by)],
    )


def _normal_or_same(uri: str) -> str:
    """A listed URI's normal form, or itself when it has none (the backend listed it so: it is read as listed)."""
    try:
        return normalized_uri(uri)
    except MalformedResourceUri:
        return uri


def completion_template(catalog: Catalog, uri: str) -> RoutedTemplate | None:
    """The template a completion's `ref/resource` names: by its URI template, or by a URI it serves (the
    specification allows either), matched as a read of that URI routes (in normal form); None for a listed
    resource's URI or a URI no template serves. The completion is judged as one for that template, as a read is:
    judged by the URI as sent, a concrete URI got past a policy naming the template."""
    exact = catalog.template_named(uri)
    if exact is not None or len(uri) > DEFAULT_MAX_URI_LENGTH:
        return exact
    normal = normalized_uri(uri)
    return catalog.template_named(normal) or catalog.matching_template(normal)
