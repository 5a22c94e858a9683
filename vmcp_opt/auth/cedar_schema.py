"""The Cedar schema of what the gateway sends (auth/cedar.py): the entities, their attributes, and the actions
with the resource types each applies to; and the policies checked against it with Cedar's strict validator,
so a misspelt entity type or attribute stops the start instead of never matching. `vmcp auth schema` prints it.

Claims and arguments (as ToolHive's vMCP names them): a token's claim `email` is the principal's attribute
`claim_email`, a call's argument `timezone` is `context.arg_timezone` (call_tool only). Cedar's schema has no
open records, so the attributes the policies name are declared, optional, with the type their use implies
(`named_attributes`: `like` a String, `>` a Long, `.contains` a Set of String, `&&` a Boolean, `==` its literal's
type, else String); the validator then requires `principal has claim_x && ...`, Cedar's test for a missing one.
A value is sent as that type (`converted`; a whole-number float such as `6.0` as the Long 6, since JSON Schema and
pydantic take it for the integer); a named one present with a type the policies cannot judge (`6.5` or `"6"` for a
Long, an object) makes the request unjudgeable, denied: absent, it would slip past a `forbid` that tests it.
A JSON `null` counts as absent, as a missing value does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import cedarpy

ACTIONS: dict[tuple[str, str], str] = {
    ("tool", "list"): "list_tools",
    ("tool", "use"): "call_tool",
    ("prompt", "list"): "list_prompts",
    ("prompt", "use"): "get_prompt",
    ("prompt", "complete"): "complete",
    ("resource", "list"): "list_resources",
    ("resource", "use"): "read_resource",
    ("template", "list"): "list_resources",
    ("template", "use"): "read_resource",
    ("template", "complete"): "complete",
}
KNOWN_ACTIONS = frozenset(ACTIONS.values())
# The entity type of each target kind (a resource template is a `Resource` with `template` true).
RESOURCE_TYPES = {"tool": "Tool", "prompt": "Prompt", "resource": "Resource", "template": "Resource"}
_STRING: dict[str, Any] = {"type": "String"}
_BOOLEAN: dict[str, Any] = {"type": "Boolean"}
_STRINGS: dict[str, Any] = {"type": "Set", "element": {"type": "String"}}
_LONG: dict[str, Any] = {"type": "Long"}
CLAIM_PREFIX = "claim_"  # a token claim, as a principal attribute
ARG_PREFIX = "arg_"  # a tool call's argument, as a context attribute of call_tool
# A claim's or argument's value is sent only within these (a client's 1 MB argument would be parsed by Cedar and
# matched by `like` in each decision); a named one beyond them cannot be judged, so that request is denied.
MAX_VALUE_CHARS = 4096  # a string's characters, or a set's together
MAX_SET_ITEMS = 256
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1  # Cedar's Long
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")
# The attributes `_principal` and `_resource` give each entity type: SCHEMA is built from these, and a test
# checks the entities the gateway sends against it, so the two cannot drift apart.
ATTRIBUTES: dict[str, dict[str, dict[str, Any]]] = {
    "User": {
        "subject": _STRING,
        "authenticated": _BOOLEAN,
        "groups": _STRINGS,
        "roles": _STRINGS,
        "scopes": _STRINGS,
        "client_id": _STRING,
    },
    "Group": {},
    "Backend": {},
    "Tool": {
        "name": _STRING,
        "backend": _STRING,
        "read_only": _BOOLEAN,
        "destructive": _BOOLEAN,
        "idempotent": _BOOLEAN,
        "open_world": _BOOLEAN,
    },
    "Prompt": {"name": _STRING, "backend": _STRING},
    "Resource": {"uri": _STRING, "backend": _STRING, "template": _BOOLEAN},
}
PARENTS = {"User": ["Group"], "Tool": ["Backend"], "Prompt": ["Backend"], "Resource": ["Backend"]}


def _schema(
    claims: Mapping[str, dict[str, Any]] | None = None, args: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Cedar schema (JSON form) of what `decide_all` sends: the entities above, each action applying to
    the principal `User` and the resource types of the targets it is asked for, with an empty context; and
    the optional `claims` of User and `args` of call_tool's context the policies name (`named_attributes`)."""
    optional = {attr: {**kind, "required": False} for attr, kind in (claims or {}).items()}
    entity_types: dict[str, Any] = {
        name: {
            "memberOfTypes": PARENTS.get(name, []),
            "shape": {
                "type": "Record",
                "attributes": {
                    **{attr: {**kind, "required": True} for attr, kind in attributes.items()},
                    **(optional if name == "User" else {}),
                },
            },
        }
        for name, attributes in ATTRIBUTES.items()
    }
    applies: dict[str, set[str]] = {}
    for (kind, _operation), action in ACTIONS.items():
        applies.setdefault(action, set()).add(RESOURCE_TYPES[kind])
    actions = {
        action: {
            "appliesTo": {
                "principalTypes": ["User"],
                "resourceTypes": sorted(types),
                "context": {
                    "type": "Record",
                    "attributes": {a: {**k, "required": False} for a, k in (args or {}).items()}
                    if action == "call_tool"
                    else {},
                },
            }
        }
        for action, types in sorted(applies.items())
    }
    return {"": {"entityTypes": entity_types, "actions": actions}}


SCHEMA = _schema()


def schema_problems(text: str) -> list[tuple[int, str, str]]:
    """What Cedar's strict validator finds in `text` against SCHEMA, per failing policy: its position among the
    policies (-1 when Cedar names it otherwise), its label (`policy "<@id>"` or Cedar's id) and what is wrong,
    said with what the gateway does send."""
    claims, args = named_attributes(json.loads(cedarpy.policies_to_json_str(text)))
    result = cedarpy.validate_policies(text, _schema(claims, args) if claims or args else SCHEMA)
    if result.validation_passed:
        return []
    problems: dict[str, list[str]] = {}
    for error in result.errors:
        message = error.error.removeprefix(f"for policy `{error.policy_id}`, ")
        problems.setdefault(error.policy_id, []).append(message)
    found = []
    for policy_id, messages in problems.items():
        index = int(policy_id.removeprefix("policy")) if re.fullmatch(r"policy\d+", policy_id) else -1
        named = result.id_annotations_by_policy_id.get(policy_id)
        label = f'policy "{named}"' if named else policy_id
        found.append((index, label, "; ".join(_explained(messages))))
    return found


_MISSING_ATTRIBUTE = re.compile(r"attribute `([^`]*)` on entity type `([^`]*)` not found")
_UNGUARDED = re.compile(r"unable to guarantee safety of access to optional attribute `((?:claim|arg)_[^`]*)`.*")
_NO_ACTION = "unable to find an applicable action given the policy scope constraints"


def _explained(messages: list[str]) -> list[str]:
    """Cedar's messages for one policy, with what the gateway does send: a missing attribute once, with the
    attributes of each type that lacks it; the catch-all "no applicable action" only when nothing else is said."""
    missing: dict[str, list[str]] = {}
    said: list[str] = []
    for message in dict.fromkeys(messages):
        found = _MISSING_ATTRIBUTE.fullmatch(message)
        unguarded = _UNGUARDED.fullmatch(message)
        if found:
            missing.setdefault(found.group(1), []).append(found.group(2))
        elif unguarded:
            attr = unguarded.group(1)
            holder = "principal" if attr.startswith(CLAIM_PREFIX) else "context"
            said.append(
                f"{message}: a claim or argument may be absent; test it first, "
                f"`{holder} has {attr} && {holder}.{attr} ...`"
            )
        elif message.startswith("unrecognized entity type"):
            said.append(f"{message}; the entity types are {', '.join(sorted(ATTRIBUTES))}")
        elif message != _NO_ACTION:
            said.append(message)
    for attribute, types in missing.items():
        have = "; ".join(f"{name} [{', '.join(sorted(ATTRIBUTES.get(name, {})))}]" for name in sorted(types))
        owners = sorted(name for name, attributes in ATTRIBUTES.items() if attribute in attributes)
        hint = f"; only {', '.join(owners)} {'has' if len(owners) == 1 else 'have'} it" if owners else ""
        if len(owners) == 1 and owners[0] in RESOURCE_TYPES.values():
            hint += f": limit the policy to actions on {owners[0]}, or test `resource is {owners[0]} && ...`"
        said.append(f"attribute `{attribute}` not found on {', '.join(sorted(types))} (their attributes: {have}){hint}")
    if not said and _NO_ACTION in messages:
        said.append(
            f"no action applies to this principal and resource (the actions: {_actions_by_resource()}; "
            "the principal is a User)"
        )
    return said


def _actions_by_resource() -> str:
    """`call_tool, list_tools on Tool; ...`: which actions reach which resource type."""
    on: dict[str, set[str]] = {}
    for (kind, _operation), action in ACTIONS.items():
        on.setdefault(RESOURCE_TYPES[kind], set()).add(action)
    return "; ".join(f"{', '.join(sorted(actions))} on {kind}" for kind, actions in on.items())


# --- claims and arguments ------------------------------------------------------------------------------------

_BY_LITERAL = {bool: _BOOLEAN, int: _LONG, str: _STRING}
_BOOLEAN_OPERANDS = {"&&": ("left", "right"), "||": ("left", "right"), "!": ("arg",), "if-then-else": ("if",)}
_LONG_OPERATORS = frozenset({"<", "<=", ">", ">=", "+", "-", "*", "neg"})


def named_attributes(parsed: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The `claim_*` attributes of `principal` and `arg_*` attributes of `context` the policies (Cedar's JSON
    form) read or test with `has`, each with the type its first typed use implies (String without one). A use
    of another type is then a validation error at load, not a silent denial."""
    uses: list[tuple[int, str, dict[str, Any] | None]] = []
    for node, parent, role in _walk(parsed.get("staticPolicies", {}), None, ""):
        read = _claim_or_arg(node)
        if read is not None:
            typed = parent is not None and "has" not in node  # `principal has claim_x` is a Boolean, not the claim
            uses.append((*read, _implied(parent, role) if typed and parent is not None else None))
    found: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] = ({}, {})
    for which, attr, kind in uses:
        if kind is not None:
            found[which].setdefault(attr, kind)
    for which, attr, _kind in uses:
        found[which].setdefault(attr, _STRING)
    return found


def _walk(node: Any, parent: dict[str, Any] | None, role: str) -> Iterator[tuple[Any, dict[str, Any] | None, str]]:
    """Every node with the operator node it is an operand of (`{op: {...}}`) and its role there (left, right...)."""
    yield node, parent, role
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parent, role)
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and len(node) == 1:
                for operand_role, operand in value.items():
                    yield from _walk(operand, node, operand_role)
            else:
                yield from _walk(value, None, key)


def _claim_or_arg(node: Any) -> tuple[int, str] | None:
    """0 and the attribute for `principal.claim_x` (or `principal has claim_x`), 1 for `context.arg_x`."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    inner = node.get(".") or node.get("has")
    if not isinstance(inner, dict) or not isinstance(inner.get("attr"), str):
        return None
    attr, left = inner["attr"], inner.get("left")
    if left == {"Var": "principal"} and attr.startswith(CLAIM_PREFIX):
        return 0, attr
    if left == {"Var": "context"} and attr.startswith(ARG_PREFIX):
        return 1, attr
    return None


def _implied(parent: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The type an operand in `role` of the operator `parent` must have, when the operator says."""
    [(op, operands)] = parent.items()
    if op == "has" or (op == "." and role == "left"):
        return None
    if op == "like" or (op == "contains" and role == "right"):
        return _STRING
    if op in _LONG_OPERATORS:
        return _LONG
    if op in ("contains", "containsAll", "containsAny", "isEmpty") and role in ("left", "arg"):
        return _STRINGS
    if op in ("containsAll", "containsAny"):
        return _STRINGS
    if role in _BOOLEAN_OPERANDS.get(op, ()):
        return _BOOLEAN
    if op in ("==", "!=") and isinstance(operands, dict):
        other = operands.get("right" if role == "left" else "left")
        if isinstance(other, dict) and "Set" in other:
            return _STRINGS
        if isinstance(other, dict) and "Value" in other:
            value = other["Value"]
            return _STRINGS if isinstance(value, list) else _BY_LITERAL.get(type(value))
    return None


class Unjudgeable(ValueError):
    """A named claim or argument the policies cannot be asked about (too large, of another type than their use,
    or two names spelt alike)."""


def identifier(name: str) -> str:
    """A claim's or argument's name as a Cedar identifier: each character outside [A-Za-z0-9_] an underscore."""
    return _NOT_IDENTIFIER.sub("_", name)


def converted(values: Mapping[str, Any], prefix: str, named: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The attributes of `values` (a token's claims, a call's arguments) the policies name (`named`, with their
    types): each under `prefix` + its name as an identifier, as its type (`null` is absent); `Unjudgeable` for a
    named one past the bounds, of a type the policies cannot judge, or named twice (`a-b` and `a_b`), which a
    `forbid` could otherwise be slipped past. The reason names the attribute and the value's type, never the
    value (it may be a secret). Only the named ones are looked at beyond their names."""
    found: dict[str, Any] = {}
    seen: set[str] = set()
    for name in values:
        attr = prefix + (name if name.isidentifier() and name.isascii() else identifier(name))
        kind = named.get(attr)
        if kind is None:
            continue
        if attr in seen:
            raise Unjudgeable(f"two {_what(prefix)}s are named `{attr}` once made identifiers")
        seen.add(attr)
        value = _typed(values[name], kind)
        if value is _TOO_LARGE:
            raise Unjudgeable(
                f"the {_what(prefix)} `{attr}` is larger than the policies are evaluated with "
                f"({MAX_VALUE_CHARS} characters, {MAX_SET_ITEMS} items)"
            )
        if value is _WRONG_TYPE:
            raise Unjudgeable(
                f"the {_what(prefix)} `{attr}` is {_json_type(values[name])}, which the policies cannot judge "
                f"(they use it as {_cedar_type(kind)})"
            )
        if value is not None:
            found[attr] = value
    return found


_TOO_LARGE = object()
_WRONG_TYPE = object()


def _json_type(value: Any) -> str:
    """The kind of a JSON value, said without the value: a log line and a client's error may show it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer outside Cedar's Long range" if not LONG_MIN <= value <= LONG_MAX else "an integer"
    if isinstance(value, float):
        return "a number outside Cedar's Long range" if value.is_integer() else "a number that is not whole"
    if isinstance(value, str):
        return "a string" if _encodable(value) else "a string with a lone surrogate"
    if isinstance(value, list):
        return "an array" if all(isinstance(item, str) for item in value) else "an array not all of strings"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _cedar_type(kind: dict[str, Any]) -> str:
    return "a Set of String" if kind.get("type") == "Set" else f"a {kind['type']}"


def _what(prefix: str) -> str:
    return "claim" if prefix == CLAIM_PREFIX else "argument"


def _typed(value: Any, kind: dict[str, Any]) -> Any:
    """`value` as an attribute of type `kind`: None for `null`, `_WRONG_TYPE` when it is of another type (a
    policy cannot judge it), `_TOO_LARGE` past the bounds."""
    if value is None:
        return None
    if kind is _BOOLEAN:
        return value if isinstance(value, bool) else _WRONG_TYPE
    if kind is _LONG:
        return _long(value)
    if kind is _STRING:
        if not isinstance(value, str):
            return _WRONG_TYPE
        if len(value) > MAX_VALUE_CHARS:
            return _TOO_LARGE
        return value if _encodable(value) else _WRONG_TYPE
    if not isinstance(value, list):
        return _WRONG_TYPE
    items = value[: MAX_SET_ITEMS + 1]  # lengths first: nothing past the bounds is encoded or copied
    if not all(isinstance(item, str) for item in items):
        return _WRONG_TYPE
    if len(value) > MAX_SET_ITEMS or sum(len(item) for item in items) > MAX_VALUE_CHARS:
        return _TOO_LARGE
    return value if all(_encodable(item) for item in value) else _WRONG_TYPE


def _long(value: Any) -> Any:
    """An integer within Cedar's Long, a whole-number float (`6.0`: JSON Schema's and pydantic's integer) as one."""
    if isinstance(value, float) and value.is_integer() and LONG_MIN <= value <= LONG_MAX:
        value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool) and LONG_MIN <= value <= LONG_MAX
    return value if ok else _WRONG_TYPE


def _encodable(text: str) -> bool:
    """Not a lone UTF-16 surrogate (JSON may escape one): Cedar would refuse the whole request's entities."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
