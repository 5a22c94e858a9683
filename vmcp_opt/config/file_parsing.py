"""A config file's text as a document: JSON or YAML, each key written twice in one mapping noted (both parsers
keep only the last, silently), and a YAML mistake said on one line with its line, column and likely cause; the
document's `${…}` texts found by location (loading decides where they are expanded). What no config is ends in
one line as well, never a traceback or a hang: nesting past `MAX_NESTING` (the parsers' and every later walk's
stack), a YAML alias inside its own anchor, aliases repeating more than `MAX_ALIASED_VALUES` values (a bomb)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vmcp_opt.config.base import ConfigError

# `${NAME}`, and the shell's `${NAME:-default}` forms, which nothing in the config expands either.
REFERENCE_TEXT = re.compile(r"\$\{[^{}]*\}")


def references_in(
    value: Any, location: tuple[int | str, ...] = ()
) -> Iterator[tuple[tuple[int | str, ...], list[str]]]:
    """Each string under `value` that holds `${…}`, by its location, with the references it holds, in document
    order. Mapping keys are names (an `env` variable's, a tool's), not settings: not searched. A walk of its own,
    not recursion: an environment variable's or a flag's JSON is nested as deep as its writer likes."""
    pending: list[tuple[tuple[int | str, ...], Any]] = [(location, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            found = REFERENCE_TEXT.findall(item)
            if found:
                yield where, list(dict.fromkeys(found))
        elif isinstance(item, dict):
            pending.extend(reversed([((*where, str(key)), inner) for key, inner in item.items()]))
        elif isinstance(item, list):
            pending.extend(reversed([((*where, index), inner) for index, inner in enumerate(item)]))


# Far above any real config (a workflow's JSON Schema nests a dozen levels; a shared `env` block aliased by every
# backend repeats a few thousand values), far below a RecursionError (~1000 frames; PyYAML composes a level in two)
# or an alias bomb's 10^9 values. Call arguments past 199 levels are unsendable anyway (argument_sendable.py).
MAX_NESTING = 100
MAX_ALIASED_VALUES = 100_000


def parse_json(path: Path, text: str) -> tuple[Any, list[str]]:
    """The document, and a line for each key written twice in one object (json keeps the last silently)."""
    repeated: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated.extend(
            f"key {key!r} is set twice in one object; JSON keeps only the last, so merge the two"
            for key in dict.fromkeys(key for key in keys if keys.count(key) > 1)
        )
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    except RecursionError:  # nested deeper than the parser's stack
        raise ConfigError([_too_deep(path, _line_too_deep(text))]) from None
    line = _line_too_deep(text)
    if line is not None:  # parsed, but deep enough to exhaust the stack of whatever walks it next
        raise ConfigError([_too_deep(path, line)])
    return data, repeated


def _too_deep(path: Path, line: int | None) -> str:
    return f"{path}: {f'line {line}: ' if line else ''}nested more than {MAX_NESTING} levels deep; refused"


# A JSON string (escapes skipped: `"\""` is one string) or a bracket: what nesting is made of.
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[{]|[\]}]')


def _line_too_deep(text: str) -> int | None:
    """The line where valid JSON `text` first nests past `MAX_NESTING`, or None (brackets in strings skipped)."""
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                return text.count("\n", 0, match.start()) + 1
        elif token in ("]", "}"):
            depth -= 1
    return None


class _StrictYamlLoader(yaml.SafeLoader):
    """`yaml.safe_load`, noting each key written twice in one mapping: YAML keeps only the last, so a second
    `backends:` pasted below the first would otherwise drop every backend of the first without a word."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[str] = []
        self._depth = 0  # collections open around the node being composed
        self._open_anchors: set[str] = set()  # anchors whose node is still being composed
        self._values: dict[int, int] = {}  # id(node): how many values the node stands for, aliases expanded
        self._aliased = 0  # values the aliases so far stand for

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """PyYAML's, bounded: refuses an alias inside its own anchor (a value that contains itself: every walk of
        it recursed without end), aliases standing for more than `MAX_ALIASED_VALUES` values (an alias bomb:
        ten aliases of ten aliases... are 10^9 values in a few hundred bytes), and nesting past `MAX_NESTING`."""
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent):
            return self._alias(parent, index, event)
        opens = isinstance(event, yaml.CollectionStartEvent)
        self._depth += opens
        if self._depth > MAX_NESTING:
            raise _Refused(f"nested more than {MAX_NESTING} levels deep", event)
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        node = super().compose_node(parent, index)
        self._open_anchors.discard(event.anchor)
        self._depth -= opens
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        self._values[id(node)] = 1 + sum(self._values[id(child)] for child in children)
        return node

    def _alias(self, parent: yaml.Node | None, index: Any, event: Any) -> yaml.Node | None:
        if event.anchor in self._open_anchors:
            raise _Refused(
                f"alias *{event.anchor} is inside the value &{event.anchor} it names: "
                "a value holding itself never ends",
                event,
            )
        node = super().compose_node(parent, index)  # an unknown anchor: PyYAML's own error
        self._aliased += self._values[id(node)]
        if self._aliased > MAX_ALIASED_VALUES:
            raise _Refused(
                f"the aliases up to here repeat more than {MAX_ALIASED_VALUES} values (an alias bomb?)", event
            )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # `<<` merges are meant to be overridden by the mapping's own keys; only plain keys are compared.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first_line:
                self.repeated.append(
                    f"line {line}: key {key!r} is already set on line {first_line[key]} of the same mapping; "
                    "YAML keeps only the last, so merge the two"
                )
            first_line.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path, text: str) -> tuple[Any, list[str]]:
    """The document, and a line for each key written twice in one mapping."""
    loader = _StrictYamlLoader(text)
    try:
        return loader.get_single_data(), loader.repeated
    except _Refused as exc:
        raise ConfigError([f"{path}: line {exc.line}: {exc.problem}; refused"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: {_yaml_problem(exc)}"]) from None
    except RecursionError:  # not expected past MAX_NESTING's bound; still one line rather than a traceback
        raise ConfigError([f"{path}: nested too deep to read; refused"]) from None
    finally:
        loader.dispose()


class _Refused(Exception):
    """Valid YAML no config is: what it is, and where (the event's line, 1-based)."""

    def __init__(self, problem: str, event: Any) -> None:
        super().__init__(problem)
        self.problem, self.line = problem, event.start_mark.line + 1


# Likely causes of PyYAML's most common complaints, in a newcomer's words.
_YAML_HINTS = (
    ("'\\t'", "a tab: YAML indents with spaces only"),
    (
        "mapping values are not allowed",
        "a line indented deeper than the key above it, or a value with ': ' in it to quote",
    ),
    ("expected <block end>", "an indentation that matches no level above it: the keys of one mapping line up"),
    ("could not find expected ':'", "a `key: value` line without its colon, or a quote left open"),
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where (1-based, as editors count), what, and the likely cause; not PyYAML's several lines
    naming `<unicode string>`."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"not valid YAML: {' '.join(str(exc).split())}"
    mark = exc.problem_mark
    text = f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None and exc.context_mark.line != mark.line:
        text += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    hints = [hint for marker, hint in _YAML_HINTS if marker in (exc.problem or "")]
    return text + (f" (likely {hints[0]})" if hints else "")
