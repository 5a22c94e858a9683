"""A config file's text as a document: JSON or YAML, each key written twice in one mapping noted (both parsers
keep only the last, silently), and a YAML mistake said on one line with its line, column and likely cause; the
document's `${…}` texts found by location (loading decides where they are expanded)."""

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
    """Each string under `value` that holds `${…}`, by its location, with the references it holds. Mapping keys
    are names (an `env` variable's, a tool's), not settings: not searched."""
    if isinstance(value, str):
        found = REFERENCE_TEXT.findall(value)
        if found:
            yield location, list(dict.fromkeys(found))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from references_in(item, (*location, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from references_in(item, (*location, index))


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
        return json.loads(text, object_pairs_hook=unique), repeated
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None


class _StrictYamlLoader(yaml.SafeLoader):
    """`yaml.safe_load`, noting each key written twice in one mapping: YAML keeps only the last, so a second
    `backends:` pasted below the first would otherwise drop every backend of the first without a word."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[str] = []

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
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: {_yaml_problem(exc)}"]) from None
    finally:
        loader.dispose()


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
