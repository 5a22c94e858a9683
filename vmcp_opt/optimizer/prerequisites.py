"""Tools a result cannot be called without: those that issue an opaque value it requires.

A tool that requires `token`, `session_id` or `channel_id` needs a value no request holds; a tool of the same
backend whose name says it issues that value (`GetUserToken`, `create_session`, `list_channels`) has to run
first. `find_tool` raises such a tool next to the result that needs it, as if every past task had used the two
together (P = 1 in the co-usage formula of optimizer/usage.py), so an agent gets the whole call chain.

Only names and schemas are read, so the rule works from the first request, with no history. It is
deliberately narrow: the required argument must end in a handle word (token, key, session, id, ...), and the
issuing tool's name must be a verb followed by what the argument names. Everyday arguments (`country`,
`page`, `query`) never match, because the user supplies those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmcp_opt.optimizer.documents import ToolRecord, split_identifier

# Last words of an argument whose value is issued by a system rather than known to the user.
HANDLE_WORDS = frozenset({"token", "key", "session", "cursor", "handle", "id", "ids", "uuid", "guid", "sid"})
# These say "an identifier of" the words before them, which name what has to be issued (`channel_id`).
_IDENTIFIER_WORDS = frozenset({"id", "ids", "uuid", "guid", "sid"})
# Verbs of a tool that hands out a value.
ISSUING_VERBS = frozenset(
    {
        "get", "list", "fetch", "find", "search", "query", "lookup", "retrieve", "read", "create", "generate",
        "new", "issue", "obtain", "request", "login", "open", "start", "register", "add",
    }
)  # fmt: skip
# More tools than this issuing one argument's value leave the agent guessing: none is raised. Counted among the
# tools the caller may use (`raised`): a hidden issuer neither costs it a link nor shows that it exists.
MAX_ISSUERS = 2
# Issuers of one argument's value kept per tool at indexing, before any caller's policy applies: enough for a
# caller who may see only some of them; past it, none (ambiguous for everyone, and memory stays bounded).
MAX_CANDIDATES = 8
# What follows one of these in a tool name is its input, not what it returns (`get_user_by_id`).
_PREPOSITIONS = frozenset({"by", "for", "from", "of", "with", "in", "on", "to", "at", "using", "via", "per"})


@dataclass(frozen=True)
class Prerequisite:
    """`issuer` (a position in the indexed records) issues the value of the result's `argument`."""

    issuer: int
    argument: str


def required_arguments(schema: Mapping[str, Any]) -> list[str]:
    """The arguments a call must carry: the schema's `required`, or every property when it lists none."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    required = schema.get("required")
    if isinstance(required, list):
        return [str(name) for name in required if name in properties]
    return [str(name) for name in properties]


def handle_target(argument: str) -> tuple[str, ...] | None:
    """What must be issued for `argument`, or None when a user can supply it.

    >>> handle_target("channel_id"), handle_target("token"), handle_target("country"), handle_target("id")
    (('channel',), ('token',), None, None)
    """
    words = [_singular(word) for word in split_identifier(argument)]
    if not words or words[-1] not in HANDLE_WORDS:
        return None
    while words and words[-1] in _IDENTIFIER_WORDS:
        words.pop()
    return tuple(words) or None


def issued_object(tool_name: str) -> tuple[str, ...] | None:
    """What a tool's name says it hands out: the words after its first issuing verb, up to a preposition.

    >>> issued_object("GetUserToken"), issued_object("slack_list_channels"), issued_object("get_user_by_id")
    (('user', 'token'), ('channel',), ('user',))
    """
    words = [_singular(word) for word in split_identifier(tool_name)]
    verb = next((i for i, word in enumerate(words) if word in ISSUING_VERBS), None)
    if verb is None:
        return None
    obj: list[str] = []
    for word in words[verb + 1 :]:
        if word in _PREPOSITIONS:
            break
        obj.append(word)
    while obj and obj[-1] in _IDENTIFIER_WORDS:
        obj.pop()
    return tuple(obj) or None


def issues(obj: tuple[str, ...], target: tuple[str, ...]) -> bool:
    """Whether a tool handing out `obj` supplies `target`: same head noun, and every word of the target.

    >>> issues(("user", "token"), ("token",)), issues(("token", "price"), ("token",))
    (True, False)
    """
    return obj[-1] == target[-1] and set(target) <= set(obj)


def find_prerequisites(records: Sequence[ToolRecord]) -> dict[int, tuple[Prerequisite, ...]]:
    """For each record (by position) that requires an issued value, the tools of its backend issuing it (none
    when more than `MAX_CANDIDATES` do). Which of them a caller is shown is `raised`'s: per caller, as its
    policy lets it see them."""
    issuers: dict[tuple[str, str], list[tuple[int, tuple[str, ...]]]] = {}
    for position, record in enumerate(records):
        obj = issued_object(record.original_name or record.name)
        if obj is not None:
            issuers.setdefault((record.backend, obj[-1]), []).append((position, obj))
    found: dict[int, tuple[Prerequisite, ...]] = {}
    for position, record in enumerate(records):
        needs: list[Prerequisite] = []
        for argument in required_arguments(record.input_schema):
            target = handle_target(argument)
            if target is None:
                continue
            candidates = [
                issuer
                for issuer, obj in issuers.get((record.backend, target[-1]), [])
                if issuer != position and issues(obj, target) and not _takes(records[issuer], argument)
            ]
            if len(candidates) <= MAX_CANDIDATES:
                needs.extend(Prerequisite(issuer, argument) for issuer in candidates)
        if needs:
            found[position] = tuple(needs)
    return found


def raised(needs: Sequence[Prerequisite], allowed: np.ndarray | None) -> list[Prerequisite]:
    """The issuers in `needs` a caller is shown: those it may use (`allowed`, by position; None: all), of each
    argument only when `MAX_ISSUERS` or fewer such remain."""
    visible: dict[str, list[Prerequisite]] = {}
    for needed in needs:
        if allowed is None or allowed[needed.issuer]:
            visible.setdefault(needed.argument, []).append(needed)
    return [needed for issuers in visible.values() if len(issuers) <= MAX_ISSUERS for needed in issuers]


def _takes(record: ToolRecord, argument: str) -> bool:
    """A tool that itself takes the value reads it rather than issues it (`get_user_by_id`)."""
    properties = record.input_schema.get("properties")
    return isinstance(properties, Mapping) and argument in properties


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word
