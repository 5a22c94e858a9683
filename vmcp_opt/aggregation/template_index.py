"""Which resource template a URI routes by, found without trying every template.

A URI is routed by the first template (catalogue order: priority, then config order, then listing order) that the
SDK's `UriTemplate.match` accepts. That match is a linear scan, but in Python and once per variable: a URI of n
characters costs up to n steps per variable (~0.3 µs a step; one 3-variable template and a 64 KB URI took 20 ms,
one 255-variable template 4.3 s). Tried against every template, a 2 KB URI cost 9 s of event-loop CPU with 50,000
templates listed. So:

- Templates are indexed by their literal prefix, the text before the first `{` (`file:///`, `repo://`): a URI is
  tried only against the templates whose prefix it begins with (a template matches only such URIs), found by
  bisection over the sorted prefixes and each prefix's nearest shorter prefix (`_PrefixChains`).
- Before the SDK's scan, a candidate's literal pieces must occur in the URI in order (`str.find`, in C): a
  template whose text the URI lacks is passed over at C speed.
- What is left is bounded per URI: each SDK scan is charged its URI's length times the template's variables
  against `MATCH_WORK_BUDGET`, each literal check a 64th of that length against `LITERAL_CHECK_BUDGET` (apart, so
  the checks never eat into the scans the budget promises), and a URI whose candidates would cost more gets
  `TemplateMatchTooCostly`, a clear error, instead of blocking the event loop (~0.2 s at most).

The catalogue also keeps at most `MAX_UNANCHORED_TEMPLATES` templates a backend with no literal prefix (they
are candidates for every URI); it drops the rest with a warning.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate

from vmcp_opt.display import shorten

__all__ = [
    "LITERAL_CHECK_BUDGET",
    "MATCH_WORK_BUDGET",
    "MAX_UNANCHORED_TEMPLATES",
    "IndexedTemplate",
    "TemplateIndex",
    "TemplateMatchTooCostly",
    "literal_prefix",
]

# Character steps one URI's matching may take (~0.3 µs each): every candidate of a 1 KB URI with 3 variables
# is ~170 scans; a 64 KB URI still gets a full scan of one template of up to 8 variables.
MATCH_WORK_BUDGET = 1 << 19
# The same steps spent on literal checks, a budget of their own: 50,000 candidates of a short URI, ~40 ms.
LITERAL_CHECK_BUDGET = MATCH_WORK_BUDGET // 4
# Templates of one backend that begin with a variable (`{name}/…`): every URI is a candidate for each of them.
MAX_UNANCHORED_TEMPLATES = 32
_LITERAL_CHECK_DIVISOR = 64  # a `str.find` pass costs about a 64th of a Python scan step per character

_EXPRESSION = re.compile(r"\{[^}]*\}")


def literal_prefix(uri_template: str) -> str:
    """The text before the template's first expression: every URI it matches begins with it."""
    brace = uri_template.find("{")
    return uri_template if brace == -1 else uri_template[:brace]


@dataclass(frozen=True)
class IndexedTemplate:
    """A template that can route reads: its catalogue position, what it must hold in order, and its matcher."""

    position: int
    matcher: UriTemplate
    prefix_length: int
    literals: tuple[str, ...]  # its literal pieces after the prefix, in order; a matched URI holds each in turn
    variables: int

    @classmethod
    def of(cls, position: int, matcher: UriTemplate) -> IndexedTemplate:
        text = matcher.template
        prefix = literal_prefix(text)
        pieces = _EXPRESSION.split(text[len(prefix) :])
        return cls(position, matcher, len(prefix), tuple(p for p in pieces if p), len(matcher.variables))

    def literals_in_order(self, uri: str) -> bool:
        start = self.prefix_length
        for literal in self.literals:
            found = uri.find(literal, start)
            if found == -1:
                return False
            start = found + len(literal)
        return True


class TemplateMatchTooCostly(MCPError):
    def __init__(self, uri: str, tried: int) -> None:
        super().__init__(
            types.INVALID_PARAMS,
            f"URI '{shorten(uri)}' ({len(uri):,} characters) could not be matched against the resource templates "
            f"that could serve it within the gateway's bound of {MATCH_WORK_BUDGET:,} character steps ({tried} "
            "tried; each costs the URI's length times the template's variables; checking a template's literal "
            f"text costs a 64th of the URI's length, {LITERAL_CHECK_BUDGET:,} steps of it at most)",
            {
                "max_template_match_steps": MATCH_WORK_BUDGET,
                "max_literal_check_steps": LITERAL_CHECK_BUDGET,
                "templates_tried": tried,
            },
        )


class _PrefixChains:
    """The distinct literal prefixes, sorted, each with its parent: the longest other prefix it begins with.

    The prefixes a URI begins with are the largest prefix not above it (bisection) and that prefix's ancestors:
    any prefix p of the URI sorts between p and the URI, so the largest one there begins with p."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self._sorted = sorted(set(prefixes))
        self._parent: dict[str, str | None] = {}
        open_chain: list[str] = []  # the ancestors of the prefix being placed, nearest last
        for prefix in self._sorted:
            while open_chain and not prefix.startswith(open_chain[-1]):
                open_chain.pop()
            self._parent[prefix] = open_chain[-1] if open_chain else None
            open_chain.append(prefix)

    def prefixes_of(self, uri: str) -> Iterator[str]:
        at = bisect.bisect_right(self._sorted, uri) - 1
        prefix = self._sorted[at] if at >= 0 else None
        while prefix is not None:
            if uri.startswith(prefix):
                yield prefix
            prefix = self._parent[prefix]


class TemplateIndex:
    """The catalogue's routable templates by literal prefix, tried in catalogue order."""

    def __init__(self, matchers: Sequence[UriTemplate | None]) -> None:
        """`matchers`: each catalogue template's matcher in catalogue order (None: it routes nothing)."""
        self._by_prefix: dict[str, list[IndexedTemplate]] = {}
        for position, matcher in enumerate(matchers):
            if matcher is not None:
                group = self._by_prefix.setdefault(literal_prefix(matcher.template), [])
                group.append(IndexedTemplate.of(position, matcher))
        self._chains = _PrefixChains(self._by_prefix)

    def first_match(self, uri: str) -> int | None:
        """The catalogue position of the first template `uri` matches; `TemplateMatchTooCostly` past the bound."""
        checks, work, tried = 0, 0, 0
        for candidate in self._candidates(uri):
            checks += 1 + len(candidate.literals) + len(uri) // _LITERAL_CHECK_DIVISOR
            if checks > LITERAL_CHECK_BUDGET:
                raise TemplateMatchTooCostly(uri, tried)
            if not candidate.literals_in_order(uri):
                continue
            work += len(uri) * max(1, candidate.variables)
            if work > MATCH_WORK_BUDGET:
                raise TemplateMatchTooCostly(uri, tried)
            tried += 1
            if candidate.matcher.match(uri) is not None:
                return candidate.position
        return None

    def _candidates(self, uri: str) -> Iterator[IndexedTemplate]:
        """The templates whose literal prefix `uri` begins with, in catalogue order (each group is in order)."""
        groups = [self._by_prefix[prefix] for prefix in self._chains.prefixes_of(uri)]
        return heapq.merge(*groups, key=_position)


def _position(template: IndexedTemplate) -> int:
    return template.position
