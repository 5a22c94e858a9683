"""The Cedar schema of what the gateway sends (auth/cedar.py): the entities, their attributes, and the actions
with the resource types each applies to; and the policies checked against it with Cedar's strict validator,
so a misspelt entity type or attribute stops the start instead of never matching. `vmcp auth schema` prints it.
"""

from __future__ import annotations

import re
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


def _schema() -> dict[str, Any]:
    """The Cedar schema (JSON form) of what `decide_all` sends: the entities above, each action applying to
    the principal `User` and the resource types of the targets it is asked for, with an empty context."""
    entity_types = {
        name: {
            "memberOfTypes": PARENTS.get(name, []),
            "shape": {
                "type": "Record",
                "attributes": {attr: {**kind, "required": True} for attr, kind in attributes.items()},
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
                "context": {"type": "Record", "attributes": {}},
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
    result = cedarpy.validate_policies(text, SCHEMA)
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
_NO_ACTION = "unable to find an applicable action given the policy scope constraints"


def _explained(messages: list[str]) -> list[str]:
    """Cedar's messages for one policy, with what the gateway does send: a missing attribute once, with the
    attributes of each type that lacks it; the catch-all "no applicable action" only when nothing else is said."""
    missing: dict[str, list[str]] = {}
    said: list[str] = []
    for message in dict.fromkeys(messages):
        found = _MISSING_ATTRIBUTE.fullmatch(message)
        if found:
            missing.setdefault(found.group(1), []).append(found.group(2))
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
