"""Authorization with Cedar (`cedarpy`, the Cedar engine's Python binding): the router's `Policy`.

The entities a policy sees:
- principal `User::"<subject>"` (`User::"anonymous"` without one) in `Group::"<group>"` for each of its groups,
  with attributes `subject`, `authenticated`, `groups`, `roles`, `scopes` (sets of strings) and `client_id`, and
  `claim_<name>` for each token claim a policy names (as ToolHive's vMCP: `principal.claim_email`);
- resource `Tool::"<name>"` in `Backend::"<backend>"`, with `name`, `backend` and the tool's annotation hints
  `read_only`, `destructive`, `idempotent`, `open_world` (the MCP defaults when a tool gives none);
  `Prompt::"<name>"` and `Resource::"<uri or template>"` with `name`/`uri` and `backend` (a URI in RFC 3986 normal
  form: routing/resource_uris.py);
- actions `list_tools`, `call_tool`, `list_prompts`, `get_prompt`, `list_resources`, `read_resource`, `complete`;
- the context of a `call_tool` with arguments: `arg_<name>` for each argument a policy names; empty otherwise.

Claims and arguments are optional attributes of the type the policies use them as (cedar_schema.py
`named_attributes`): a policy tests one with `has` first (the validator requires it). A whole-number float (`6.0`)
is the Long 6, as JSON Schema and pydantic take it; `null` is absent. Only the names the policies read are sent, each
within `MAX_VALUE_CHARS`/`MAX_SET_ITEMS`; a named one past them, of a type its use cannot judge (`6.5` or `"6"` for a
Long, an object, a list of numbers), or two names made alike as identifiers (`a-b`, `a_b`), cannot be judged and the
request is denied (a `forbid` must not be slipped past by size or type), logged naming the attribute and the type. A call whose named
arguments are all absent is the call judged in the caller's view (kept); one with some is judged alone, not kept,
and Cedar's error text for it is neither logged nor sent (it may quote the arguments). A view is judged without
arguments, so a tool whose `permit` requires an argument is called, not listed.

A call allowed by a policy annotated `@approval("<message>")` runs only once the user approves it through
their client (routing/approval.py); with several such policies, any one of them asks.

A tool is listed (and found by find_tool) only when the caller may both list and call it. The gateway's own
meta-tools (find_tool, call_tool from the source `vmcp`, a backend name config refuses) are always allowed:
they reveal and reach only what the policy allows.

Fail closed: a file that is not UTF-8, does not parse, names an action that does not exist or holds a
template stops the start with the file, line and reason. So does a policy that does not validate against
`SCHEMA` (auth/cedar_schema.py), the schema of exactly these entities and actions (Cedar's strict
validator): a misspelt entity type (`Grup::"dev"`), attribute (`resource.readonly`) or a type mismatch
would otherwise be a policy that never matches, a silent denial or, in a `forbid`, a silent permission. A decision with an evaluation error
is a denial (Cedar itself would skip an erroring `forbid`) whose reason quotes Cedar's first error, logged
once per policy. Decisions without arguments depend only on the caller's principal (and the claims the policies
name: `principal_key`) and the target, so they are cached.

Groups: a token may carry thousands (enterprise IdPs), and Cedar parses every entity sent in every batch. So
only the groups a policy can test are sent: those named as `Group::"…"` and those tested as literals by
`principal.groups.contains("…")`, `.containsAny([…])`, `.containsAll([…])`; a caller's other groups cannot
change a decision. A policy that reads `principal.groups` otherwise (`.isEmpty()`, `.contains(resource.name)`)
gets the whole set in the attribute, up to `MAX_WHOLE_GROUPS`; a caller with more is denied everything (not
judged on a cut list, which could slip past a `forbid`), logged once.

Past ~500 lines on purpose: the engine's calls, the entities it is sent and the policy scan that decides which
groups those are share one picture of what a policy can test; the schema Cedar validates against, and the claims
and arguments it names (their types, names and bounds), are cedar_schema.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from vmcp_opt.auth import file_modes
from vmcp_opt.auth.caller import Caller
from vmcp_opt.auth.cedar_schema import (
    ACTIONS,
    ARG_PREFIX,
    CLAIM_PREFIX,
    KNOWN_ACTIONS,
    Unjudgeable,
    converted,
    named_attributes,
    schema_problems,
)
from vmcp_opt.config import RESERVED_NAMES
from vmcp_opt.display import shorten
from vmcp_opt.routing.policy import ALLOW, Decision, PolicyLoadError, Target

logger = logging.getLogger(__name__)

# What a writer of the policy file could do, for the messages about who can write it (file_modes.py).
_GRANTS = "change what every caller may list and call, from the next start"

GATEWAY_SOURCE = "vmcp"  # routing.providers.GATEWAY_SOURCE: the meta-tools' source
META_TOOLS = RESERVED_NAMES  # find_tool and call_tool: no backend tool or workflow may take these names
# `Action::"x"`, with any spacing Cedar accepts around `::` (`Action :: "x"` too).
_ACTION_REFERENCE = re.compile(r'\bAction\s*::\s*"((?:[^"\\]|\\.)*)"')
_TEMPLATE_SLOT = re.compile(r"\?(?:principal|resource)\b")
_ERRING_POLICY = re.compile(r"policy `((?:[^`\\]|\\.)*)`")
# Longest target name the decision cache keeps as it is (tool and prompt names are at most 128 characters).
NAME_KEPT = 256
# A Cedar batch holds the GIL throughout: each is sized to take about `CHUNK_SECONDS`. Measured with a short
# policy: ~0.17 ms a decision, so 128 a chunk ≈ 22 ms; a longer policy set costs more per decision, so the size
# follows the time the last chunk took, within `MIN_CHUNK`..`MAX_CHUNK`.
CHUNK_SECONDS = 0.02
FIRST_CHUNK = 64
MIN_CHUNK = 8
MAX_CHUNK = 1024
# Most groups a caller may have when a policy reads `principal.groups` as a whole: they are all sent then, and
# Cedar parses them again in each batch (measured: 500 decisions in 0.06 s with 10 groups, 0.17 s with 2,000).
# 2,000 is more than a token of GUID-named groups holds within a 64 KB header.
MAX_WHOLE_GROUPS = 2000
# The set tests whose literal arguments name the groups a policy can see through `principal.groups`.
_SET_TESTS = ("contains", "containsAny", "containsAll")


def is_meta_tool(target: Target) -> bool:
    """One of the gateway's own meta-tools: by its source and its name, so neither alone opens the exemption."""
    return target.kind == "tool" and target.source == GATEWAY_SOURCE and target.name in META_TOOLS


@dataclass(frozen=True)
class GroupUse:
    """Which of a caller's groups the policies can tell apart. The default, nothing known of the policies,
    sends every group."""

    named: frozenset[str] | None = None  # groups named as `Group::"…"` or literals in a set test; None: all
    whole: bool = True  # a policy reads `principal.groups` other than by a literal set test

    def member_of(self, groups: frozenset[str]) -> list[str]:
        """The groups sent as the principal's parents: `principal in Group::"x"` names x."""
        return sorted(groups if self.named is None else groups & self.named)

    def attribute(self, groups: frozenset[str]) -> list[str]:
        """The principal's `groups` attribute: only the tested literals, unless a policy reads it whole."""
        return sorted(groups if self.whole or self.named is None else groups & self.named)

    def too_many(self, groups: frozenset[str]) -> bool:
        return self.whole and len(groups) > MAX_WHOLE_GROUPS


class CedarPolicy:
    def __init__(self, text: str, source: str = "<policies>", cache_size: int = 100_000) -> None:
        self.source = source
        self.policies = load_policies(text, source)
        parsed = json.loads(cedarpy.policies_to_json_str(text))
        # Policy id -> the message of its `@approval("…")` annotation: a call it allows needs the user's approval.
        self.approvals = _approvals(parsed)
        self.group_use = group_use(parsed)
        # The `principal.claim_*` and `context.arg_*` attributes the policies name, with their types.
        self.claim_kinds, self.arg_kinds = named_attributes(parsed)
        self.cache_size = cache_size
        self._cache: dict[tuple[Hashable, ...], Decision] = {}
        self._errors_logged: set[str] = set()  # policy ids whose evaluation error was logged
        self._too_many_logged = False
        self._unjudged_logged: set[str] = set()

    @classmethod
    def from_file(cls, path: Path, cache_size: int = 100_000, *, strict_modes: bool = True) -> CedarPolicy:
        """Refused, as an unreadable file is, when any local user could change it (auth/file_modes.py): the next
        start would serve their policy. Loaded with a warning when only a group or another user could."""
        try:
            with path.open(encoding="utf-8") as file:  # text mode, as `read_text` read it before
                found = file_modes.exposure(path, os.fstat(file.fileno()), _GRANTS, strict=strict_modes)
                if found.refusal is not None:
                    raise PolicyLoadError(found.refusal)
                text = file.read()
        except UnicodeDecodeError as exc:
            line = exc.object.count(b"\n", 0, exc.start) + 1
            raise PolicyLoadError(
                f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                "save it as UTF-8"
            ) from None
        except OSError as exc:
            raise PolicyLoadError(f"{path}: cannot be read: {exc.strerror}") from None
        for warning in found.warnings:
            logger.warning("authorization: policy file loaded, but %s", warning)
        # A UTF-8 byte-order mark (a Windows editor's): Cedar's parser calls it an invalid token.
        return cls(text.removeprefix("\ufeff"), str(path), cache_size)

    # --- Policy and BatchPolicy -----------------------------------------------------------------------

    def principal_key(self, caller: Caller) -> Hashable:
        """The principal, with the claims the policies name (as sent: two callers alike there are judged alike)."""
        if not self.claim_kinds:
            return caller.principal
        try:
            claims = converted(caller.claims, CLAIM_PREFIX, self.claim_kinds)
        except Unjudgeable as exc:
            return (caller.principal, str(exc))
        return (caller.principal, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in claims.items())))

    def decide(self, caller: Caller, target: Target) -> Decision:
        if is_meta_tool(target):
            return ALLOW
        try:
            context = self._context(target)
        except Unjudgeable as exc:
            return self._unjudged(target, str(exc))
        if context:
            return self._decided(caller, [target], [context])[0]  # judged alone, not kept
        key = self.principal_key(caller)
        cached = self._cache.get(_cache_key(key, target))
        return cached if cached is not None else self._decided(caller, [target], [{}], key)[0]

    def _context(self, target: Target) -> dict[str, Any]:
        """The `arg_*` attributes of a tool call's arguments the policies name ({} for anything else)."""
        if not self.arg_kinds or target.arguments is None or (target.kind, target.operation) != ("tool", "use"):
            return {}
        return converted(target.arguments, ARG_PREFIX, self.arg_kinds)

    def _unjudged(self, target: Target, why: str) -> Decision:
        """A request with a claim or argument that cannot be judged: denied, logged once per reason (no values)."""
        if why not in self._unjudged_logged and len(self._unjudged_logged) < 100:
            self._unjudged_logged.add(why)
            logger.warning("authorization: %s: %s; such requests are denied (logged once)", self.source, shorten(why))
        return Decision(False, f"{ACTIONS[(target.kind, target.operation)]}: denied: {shorten(why)}")

    def decide_all(self, caller: Caller, targets: Sequence[Target]) -> list[Decision]:
        """Many targets of one caller (the router's per-principal views), in Cedar batches of a few milliseconds
        each (`_evaluated`), judged without arguments. Each decision is kept, so a target judged in a view is not
        judged again when called: a hidden tool's first call costs what a made-up name's does (no timing oracle),
        and a listed tool's call no evaluation."""
        return self._decided(caller, targets, [{}] * len(targets))

    def _decided(
        self, caller: Caller, targets: Sequence[Target], contexts: list[dict[str, Any]], key: Hashable | None = None
    ) -> list[Decision]:
        """`decide_all` with each target's context: a decision with an empty one is looked up and kept. `key`: the
        caller's `principal_key`, when the caller has it already."""
        decisions = [ALLOW] * len(targets)
        asked: list[int] = []
        key = self.principal_key(caller) if key is None else key
        for i, target in enumerate(targets):
            if not is_meta_tool(target):
                cached = None if contexts[i] else self._cache.get(_cache_key(key, target))
                if cached is None:
                    asked.append(i)
                else:
                    decisions[i] = cached
        if asked and self.group_use.too_many(caller.groups):
            self._deny_too_many_groups(caller, targets, decisions, asked)
            return decisions
        try:
            claims = converted(caller.claims, CLAIM_PREFIX, self.claim_kinds) if self.claim_kinds else {}
        except Unjudgeable as exc:  # not kept, as too many groups are not
            for i in asked:
                decisions[i] = self._unjudged(targets[i], str(exc))
            return decisions
        # The principal's entities are the same for every chunk: built and serialised once.
        principal_entities: dict[tuple[str, str], dict[str, Any]] = {}
        principal = _principal(caller, principal_entities, self.group_use, claims)
        principal_json = json.dumps(list(principal_entities.values()))
        size, start = FIRST_CHUNK, 0
        while start < len(asked):
            chunk = asked[start : start + size]
            began = time.perf_counter()
            batch = [(targets[i], contexts[i]) for i in chunk]
            self._evaluated(key, (principal, principal_json), batch, decisions, chunk)
            start += len(chunk)
            size = _next_chunk(len(chunk), time.perf_counter() - began)
        return decisions

    def _deny_too_many_groups(
        self, caller: Caller, targets: Sequence[Target], decisions: list[Decision], at: list[int]
    ) -> None:
        """Not kept: the caller is refused before any evaluation, so nothing is learnt by timing it."""
        if not self._too_many_logged:
            self._too_many_logged = True
            logger.warning(
                "authorization: %s: a caller with %d groups is denied: a policy reads `principal.groups` as a "
                "whole and at most %d are evaluated (logged once)",
                self.source,
                len(caller.groups),
                MAX_WHOLE_GROUPS,
            )
        for i in at:
            action = ACTIONS[(targets[i].kind, targets[i].operation)]
            decisions[i] = Decision(
                False,
                f"{action}: denied: the caller has {len(caller.groups)} groups, more than the {MAX_WHOLE_GROUPS} "
                "a policy reading `principal.groups` as a whole is evaluated with",
            )

    def _evaluated(
        self,
        key: Hashable,
        principal: tuple[dict[str, str], str],
        targets: list[tuple[Target, dict[str, Any]]],
        decisions: list[Decision],
        at: list[int],
    ) -> None:
        """One `is_authorized_batch` for `targets`, their decisions into `decisions` at `at`. The engine holds the
        GIL for the whole batch: 10,000 decisions in one held the event loop (the batch runs on a worker thread)
        ~1.4 s; in chunks the loop runs between them. `principal` is the principal's uid and its entities as
        JSON; each chunk adds only its own resources' entities. A decision with a context (a call's arguments) is not
        kept, and Cedar's words about it are neither logged nor sent: they may quote an argument."""
        uid, principal_json = principal
        entities: dict[tuple[str, str], dict[str, Any]] = {}
        requests = [
            {
                "principal": uid,
                "action": {"type": "Action", "id": ACTIONS[(target.kind, target.operation)]},
                "resource": _resource(target, entities),
                "context": context,
            }
            for target, context in targets
        ]
        quiet = any(context for _target, context in targets)
        try:
            results = cedarpy.is_authorized_batch(requests, self.policies, _joined(principal_json, entities))
        except Exception as exc:  # fail closed: nothing is allowed when the engine cannot answer (not kept)
            said = "its message may quote the call's arguments" if quiet else str(exc)
            for i in at:
                decisions[i] = Decision(False, f"policy evaluation failed: {said}")
            return
        for i, (target, context), result in zip(at, targets, results, strict=True):
            action = ACTIONS[(target.kind, target.operation)]
            if result.diagnostics.errors:
                self._log_error_once(result.diagnostics.errors[0], quoted=not context)
            decisions[i] = _decision(result, action, self.approvals, quoted=not context)
            if not context:
                self._keep(_cache_key(key, target), decisions[i])

    def _keep(self, key: tuple[Hashable, ...], decision: Decision) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        if self.cache_size:
            self._cache[key] = decision

    def _log_error_once(self, message: str, *, quoted: bool = True) -> None:
        """A policy that errors usually errors for every request: its first error is logged, not each one; not
        `quoted` (a call with arguments), only the policy is named."""
        found = _ERRING_POLICY.search(message)
        policy_id = found.group(1) if found else ("" if not quoted else message)
        if policy_id not in self._errors_logged:
            self._errors_logged.add(policy_id)
            said = message if quoted else f"policy `{policy_id}` failed on a call's arguments (its message not kept)"
            logger.warning("authorization: %s: %s (such requests are denied)", self.source, said)


def _next_chunk(size: int, took: float) -> int:
    """The next chunk's size: the last one's, scaled to take `CHUNK_SECONDS`."""
    scaled = int(size * CHUNK_SECONDS / took) if took > 0 else MAX_CHUNK
    return max(MIN_CHUNK, min(MAX_CHUNK, scaled))


def _cache_key(principal: Hashable, target: Target) -> tuple[Hashable, ...]:
    return (principal, target.kind, _name_key(target.name), target.source, target.operation, _hints(target))


def _name_key(name: str) -> str | bytes:
    """A target's name as the decision cache keeps it: a resource URI is the client's own text (up to 64 KiB
    when it matches a template), and 100,000 of those kept whole would be gigabytes; a long one is kept as its
    digest instead."""
    if len(name) <= NAME_KEPT:
        return name
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()


def _decision(result: cedarpy.AuthzResult, action: str, approvals: dict[str, str], *, quoted: bool = True) -> Decision:
    if result.diagnostics.errors:
        if not quoted:  # it may quote the call's arguments
            return Decision(False, f"{action}: policy evaluation error on the call's arguments")
        # Cedar's error may quote the resource (a client's URI): the reason is cached and sent, so it is cut.
        return Decision(False, f"{action}: policy evaluation error: {shorten(result.diagnostics.errors[0], 500)}")
    if result.allowed:
        asks = [approvals[reason] for reason in result.diagnostics.reasons if reason in approvals]
        if asks and action == "call_tool":
            return Decision(True, approval=" ".join(dict.fromkeys(asks)))
        return ALLOW
    if result.diagnostics.reasons:
        ids = result.diagnostics.id_annotations_by_reason
        names = [ids.get(reason) or reason for reason in result.diagnostics.reasons]
        return Decision(False, f"{action} forbidden by policy {', '.join(names)}")
    return Decision(False, f"no policy permits {action}")


def _joined(principal_json: str, entities: dict[tuple[str, str], dict[str, Any]]) -> str:
    """One JSON list of the principal's entities (already serialised) and `entities`."""
    if not entities:
        return principal_json
    return f"{principal_json[:-1]}, {json.dumps(list(entities.values()))[1:]}"


def _principal(
    caller: Caller,
    entities: dict[tuple[str, str], dict[str, Any]],
    groups: GroupUse | None = None,
    claims: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The principal's uid, its entity and its groups' into `entities`; of its groups, those `groups` says the
    policies can tell apart (all of them without it); `claims`, its `claim_*` attributes."""
    shown = groups or GroupUse()
    member_of = shown.member_of(caller.groups)
    uid = {"type": "User", "id": caller.subject or "anonymous"}
    for group in member_of:
        entities[("Group", group)] = {"uid": {"type": "Group", "id": group}, "attrs": {}, "parents": []}
    entities[("User", uid["id"])] = {
        "uid": uid,
        "attrs": {
            "subject": caller.subject or "",
            "authenticated": caller.subject is not None,
            "groups": shown.attribute(caller.groups),
            "roles": sorted(caller.roles),
            "scopes": sorted(caller.scopes),
            "client_id": caller.client_id or "",
            **(claims or {}),
        },
        "parents": [{"type": "Group", "id": group} for group in member_of],
    }
    return uid


def _resource(target: Target, entities: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    entities[("Backend", target.source)] = {"uid": {"type": "Backend", "id": target.source}, "attrs": {}, "parents": []}
    parents = [{"type": "Backend", "id": target.source}]
    if target.kind == "tool":
        read_only, destructive, idempotent, open_world = _hints(target)
        uid = {"type": "Tool", "id": target.name}
        attrs: dict[str, Any] = {
            "name": target.name,
            "backend": target.source,
            "read_only": read_only,
            "destructive": destructive,
            "idempotent": idempotent,
            "open_world": open_world,
        }
    elif target.kind == "prompt":
        uid = {"type": "Prompt", "id": target.name}
        attrs = {"name": target.name, "backend": target.source}
    else:
        uid = {"type": "Resource", "id": target.name}
        attrs = {"uri": target.name, "backend": target.source, "template": target.kind == "template"}
    entities[(uid["type"], uid["id"])] = {"uid": uid, "attrs": attrs, "parents": parents}
    return uid


def _hints(target: Target) -> tuple[bool, bool, bool, bool]:
    """readOnlyHint, destructiveHint, idempotentHint, openWorldHint, with the MCP specification's defaults."""
    a = target.annotations
    if a is None:
        return (False, True, False, True)
    return (
        bool(a.read_only_hint) if a.read_only_hint is not None else False,
        bool(a.destructive_hint) if a.destructive_hint is not None else True,
        bool(a.idempotent_hint) if a.idempotent_hint is not None else False,
        bool(a.open_world_hint) if a.open_world_hint is not None else True,
    )


# --- loading, with the line of what is wrong -----------------------------------------------------------


def load_policies(text: str, source: str) -> cedarpy.PolicySet:
    try:
        policies = cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        line = _error_line(text, str(exc))
        raise PolicyLoadError(f"{source}:{line}: {exc}") from None
    code = _without_comments(text)
    for found in _ACTION_REFERENCE.finditer(code):
        if found.group(1) not in KNOWN_ACTIONS:
            raise PolicyLoadError(
                f'{source}:{_line(code, found.start())}: unknown action Action::"{found.group(1)}"; '
                f"the actions are {sorted(KNOWN_ACTIONS)}"
            )
    if policies.templates():
        slot = _TEMPLATE_SLOT.search(code)
        raise PolicyLoadError(
            f"{source}:{_line(code, slot.start() if slot else 0)}: policy templates (`?principal`, `?resource`) "
            "are not supported: name the principal or resource in the policy"
        )
    if len(policies) == 0:
        raise PolicyLoadError(f"{source}:1: no policies: every request would be denied")
    _validate(text, source)
    return policies


def _validate(text: str, source: str) -> None:
    """Every policy against SCHEMA: one line per policy that fails, with its line, its id and what is wrong."""
    problems = schema_problems(text)
    if not problems:
        return
    starts = _policy_lines(text)
    lines = []
    for index, label, said in problems:
        line = starts[index] if 0 <= index < len(starts) else 1
        lines.append(f"{source}:{line}: {label}: {said}")
    raise PolicyLoadError("\n    ".join(lines))


def _policy_lines(text: str) -> list[int]:
    """The line each policy starts on (its first annotation or keyword), in the order Cedar numbers them."""
    starts = []
    for start, statement in _statements(text):
        code = _without_comments(statement)  # comments dropped, their line ends kept
        first = len(code) - len(code.lstrip())
        if first < len(code):
            starts.append(_line(text, start) + code.count("\n", 0, first))
    return starts


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def group_use(parsed: dict[str, Any]) -> GroupUse:
    """Which groups the policies (Cedar's JSON form, its strings unescaped) can test: every `Group::"…"` entity
    literal, and the literals of `principal.groups.contains("…")` / `containsAny` / `containsAll`. Any other read
    of a `groups` attribute makes the whole set matter. Naming too many costs only time; missing one would
    change decisions, so anything not recognised counts as a whole read."""
    named: set[str] = set()
    whole = False

    def visit(node: Any) -> None:
        nonlocal whole
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "Group" and isinstance(node.get("id"), str):
            named.add(node["id"])
        for key, value in node.items():
            if key in _SET_TESTS and isinstance(value, dict) and _groups_read(value.get("left")) is not None:
                literals = _string_literals(value.get("right"), single=key == "contains")
                if literals is None:
                    whole = True
                named.update(literals or ())
                visit(_groups_read(value.get("left")))  # what `.groups` is read from
                visit(value.get("right"))
            elif key == "." and isinstance(value, dict) and value.get("attr") == "groups":
                whole = True
                visit(value.get("left"))
            else:
                visit(value)

    visit(parsed.get("staticPolicies", {}))
    visit(parsed.get("templates", {}))
    return GroupUse(frozenset(named), whole)


def _groups_read(node: Any) -> Any:
    """The expression whose `groups` attribute `node` reads (`principal` in `principal.groups`), or None."""
    if isinstance(node, dict) and isinstance(node.get("."), dict) and node["."].get("attr") == "groups":
        return node["."].get("left", {})
    return None


def _string_literals(node: Any, single: bool) -> list[str] | None:
    """The string literal (`single`) or set of string literals `node` is, or None when it is anything else."""
    if not isinstance(node, dict):
        return None
    if single:
        value = node.get("Value") if len(node) == 1 else None
        return [value] if isinstance(value, str) else None
    if len(node) == 1 and isinstance(node.get("Value"), list):
        values = node["Value"]
        return values if all(isinstance(v, str) for v in values) else None
    if len(node) == 1 and isinstance(node.get("Set"), list):
        elements: list[str] = []
        for element in node["Set"]:
            literal = _string_literals(element, single=True)
            if literal is None:
                return None
            elements.extend(literal)
        return elements
    return None


def _approvals(parsed: dict[str, Any]) -> dict[str, str]:
    found = {}
    for policy_id, policy in parsed.get("staticPolicies", {}).items():
        message = (policy.get("annotations") or {}).get("approval")
        if message is not None:
            found[policy_id] = str(message)
    return found


def _error_line(text: str, message: str) -> int:
    """The line Cedar's parse error is on: the first statement that fails alone, then the first of its
    lines at which a prefix of it fails with the same message (earlier prefixes only end too soon)."""
    for start, statement in _statements(text):
        try:
            cedarpy.PolicySet.from_str(statement)
            continue
        except ValueError as exc:
            alone = str(exc)
        lines = statement.splitlines(keepends=True)
        first_line = text.count("\n", 0, start) + 1
        for count in range(1, len(lines) + 1):
            try:
                cedarpy.PolicySet.from_str("".join(lines[:count]))
            except ValueError as exc:
                if str(exc) == alone:
                    return first_line + count - 1
        return first_line
    return 1


def _statements(text: str) -> list[tuple[int, str]]:
    """Each `;`-terminated statement (outside strings and comments) with its start offset."""
    found: list[tuple[int, str]] = []
    start, i, quoted = 0, 0, False
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char == ";":
            found.append((start, text[start : i + 1]))
            start = i + 1
        i += 1
    if text[start:].strip():
        found.append((start, text[start:]))
    return found


def _without_comments(text: str) -> str:
    """The text with `//` comments blanked (strings kept), so line numbers stay."""
    out, i, quoted = [], 0, False
    while i < len(text):
        char = text[i]
        if quoted:
            out.append(char)
            if char == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)
