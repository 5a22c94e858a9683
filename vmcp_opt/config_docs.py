"""docs/configuration.md, generated from the config model so that the reference cannot drift from the code.

Every setting with its type, default, environment variable and description: `vmcp config-docs` prints it,
`--output docs/configuration.md` writes it, `--check` fails when the file is stale (tests run it). A
setting's description is its `Field(description=...)`, else the comment lines right above it in
`vmcp_opt/config/`; a section's is its class docstring.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vmcp_opt import config

ENV_PREFIX = "VMCP_"
# What the keys of a mapping of sections name, in the settings' paths.
KEY_NAMES = {"tools": "<backend>", "overrides": "<tool>", "per_tool": "<tool>"}
INTRO = """\
# Configuration reference

Generated from `vmcp_opt/config/` by `vmcp config-docs --output docs/configuration.md`; do not edit by
hand (`tests/test_config_docs.py` fails when this file is stale).

A config file is YAML or JSON (`vmcp serve -c vmcp.yaml`; without `-c`, the bundled demo). Precedence,
highest first: command-line flags, environment variables, the file, the defaults below. An environment
variable is `VMCP_` and the setting's path in capitals, sections joined by `__`
(`VMCP_OPTIMIZER__ENABLED=false`); a list or a mapping is given as JSON (`VMCP_SERVER__ALLOWED_HOSTS='["a"]'`),
and the settings inside one (`backends[]`, `aggregation.tools.<backend>`) come with it, not one by one: a
variable per key of a mapping keyed by names (`rate_limits.per_tool.<tool>`, `aggregation.tools.<backend>`) is
refused, as it would lower-case the name
(`VMCP_RATE_LIMITS__PER_TOOL='{"Clock_get_current_time": {"rate": 1, "burst": 5}}'`).
Unknown keys are errors, and `vmcp validate -c FILE` reports every problem by its path. Relative paths
resolve against the config file's directory. Backend `env`, `headers`, `args` and `url` may reference
`${VAR}`s of the environment (`${VAR:-default}` when unset or empty, `${VAR-default}` when unset), so
secrets stay out of the file.
"""


@dataclass(frozen=True)
class Setting:
    path: str
    type: str
    default: str
    env: str
    description: str


@dataclass(frozen=True)
class Section:
    path: str
    description: str
    settings: list[Setting]


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [INTRO]
    for section in sections():
        lines.append(f"## `{section.path}`\n" if section.path else "## Top level\n")
        if section.description:
            lines.append(section.description + "\n")
        lines.append("| setting | type | default | environment | description |")
        lines.append("| --- | --- | --- | --- | --- |")
        for s in section.settings:
            cells = (f"`{s.path}`", s.type, s.default, s.env, s.description)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def sections() -> list[Section]:
    """The top level first, then each section in the order the model declares it, depth first."""
    return list(_walk(config.VmcpConfig, "", env=True))


def _walk(model: type[BaseModel], path: str, *, env: bool) -> Iterator[Section]:
    """`env`: whether the settings of this section can be set one by one from the environment (not inside a
    list or a mapping, which take the whole value as JSON)."""
    comments = _field_comments(model)
    settings: list[Setting] = []
    nested: list[tuple[type[BaseModel], str, bool]] = []
    for name, field in model.model_fields.items():
        here = f"{path}.{name}" if path else name
        child, suffix = _nested_model(field.annotation, KEY_NAMES.get(name, "<key>"))
        if child is not None and suffix == "":
            nested.append((child, here, env))
            continue
        if child is not None:
            nested.append((child, here + suffix, False))
        settings.append(
            Setting(
                path=here,
                type=_type_name(field.annotation) + _bounds(field),
                default=_default(field),
                env=_env_name(here) if env else "",
                description=field.description or comments.get(name, ""),
            )
        )
    if settings:
        yield Section(path, _docstring(model), settings)
    for child, child_path, child_env in nested:
        yield from _walk(child, child_path, env=child_env)


def _nested_model(annotation: Any, key: str) -> tuple[type[BaseModel] | None, str]:
    """A section model directly (suffix ""), or inside a list (`[]`) or a mapping's values (`.<key>`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], f".{key}"
    return None, ""


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    signs = (
        (annotated_types.Ge, "ge", ">="),
        (annotated_types.Gt, "gt", ">"),
        (annotated_types.Le, "le", "<="),
        (annotated_types.Lt, "lt", "<"),
    )
    bounds = []
    for item in field.metadata:
        bounds += [f"{sign} {getattr(item, name)}" for kind, name, sign in signs if isinstance(item, kind)]
        if getattr(item, "pattern", None):
            bounds.append(f"matching `{item.pattern}`")
    return f" ({', '.join(bounds)})" if bounds else ""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def _env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    inherited = {base.__doc__ for base in model.__mro__[1:]}
    return "" if doc in inherited else " ".join(inspect.cleandoc(doc).split())


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment lines right above each field in the class body (a blank line or code ends a run)."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(model).splitlines()[1:]:
        field = re.match(r"^ {4}([A-Za-z_][A-Za-z0-9_]*)\s*:", line)
        if re.match(r"^ {4}#", line):
            pending.append(line.strip().lstrip("#").strip())
            continue
        if field and pending:
            comments[field.group(1)] = " ".join(pending)
        pending = []
    return comments


if __name__ == "__main__":
    print(render(), end="")
