"""What a `VMCP_` variable that cannot be read is told, naming the variable: pydantic-settings names only the
section (`VMCP_SERVER__*: Expecting value`), ignores a section that does not exist, and reads a list's variables
by index as a mapping no list takes. Split from config/loading.py, which reports these with every other problem."""

from __future__ import annotations

import json
import os
import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_settings import EnvSettingsSource, SettingsError

from vmcp_opt.config.document import VmcpConfig
from vmcp_opt.config.references import ENV_PREFIX, Location, SourceNamer, format_location, types_at
from vmcp_opt.config.sections import BackendConfig
from vmcp_opt.config.suggestions import closest


def env_variable_problems() -> list[str]:
    """The `VMCP_` variables pydantic-settings would misread without a word: those naming no section
    (`_sectionless`) and those setting one key of a mapping keyed by names (`mapping_keys_one_by_one`).
    Loading reports these with every other problem."""
    return _sectionless() + mapping_keys_one_by_one()


def _sectionless() -> list[str]:
    """`VMCP_<section>__<key>` variables whose section does not exist, which pydantic-settings ignores: a
    misspelt `VMCP_OPTIMIZR__ENABLED` would otherwise leave the optimizer on without a word. Variables without
    `__` are not settings (VMCP_DATA_DIR, VMCP_CREDENTIAL)."""
    fields = VmcpConfig.model_fields
    sections = sorted(name for name, field in fields.items() if _is_section(field.annotation))
    problems = []
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section in fields:
            continue
        close = closest(section, sections, cutoff=0.6)
        meant = ENV_PREFIX + close[0].upper() + name[len(ENV_PREFIX) + len(section) :] if close else None
        hint = f"did you mean {meant}?" if meant else f"sections: {', '.join(sections)}"
        problems.append(f"{name}: unknown config section '{section}' ({hint})")
    return problems


def _is_section(annotation: Any) -> bool:
    """A part of the document with keys of its own (`server`, `backends`), not a value (`data_dir`)."""
    return get_origin(annotation) is list or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def unparsable(exc: SettingsError) -> str:
    """A `VMCP_` variable that pydantic-settings could not decode (a list or a mapping is JSON). It names
    only the section: the variable is found by decoding each of the section's alone."""
    field = re.search(r'field "(\w+)"', str(exc))
    culprit = _undecodable(field.group(1)) if field is not None else None
    if culprit is None:
        return f"{ENV_PREFIX}*: cannot read the value: {exc.__cause__ or exc}"
    name, loc, reason = culprit
    if len(loc) == 1:  # the section's own variable, meant as JSON: where its JSON goes wrong
        return f"{name}: cannot read the value: {reason}"
    kind, example = _json_example(loc, os.environ[name])
    either = f", or one variable per key ({name}__<KEY>=<value>)" if kind == "a section" else ""
    return (
        f"{name}: not JSON; {format_location(loc)} is {kind}, given in a variable as JSON: {name}='{example}'{either}"
    )


def _undecodable(section: str) -> tuple[str, Location, ValueError] | None:
    """The first set variable of `section` (its own, or one under it) that does not decode, where it sets, why."""
    source, field = EnvSettingsSource(VmcpConfig), VmcpConfig.model_fields.get(section)
    whole = ENV_PREFIX + section.upper()
    for name, value in sorted(os.environ.items()):
        try:
            if name.upper() == whole:
                json.loads(value)
            elif name.upper().startswith(whole + "__") and field is not None:
                source.explode_env_vars(section, field, {name if source.case_sensitive else name.lower(): value})
        except ValueError as exc:  # JSONDecodeError, or pydantic-settings' SettingsError
            return name, tuple(name[len(ENV_PREFIX) :].lower().split("__")), exc
    return None


def _json_example(loc: Location, written: str) -> tuple[str, str]:
    """What `loc` holds, and its value as JSON: a list of what was written (`a, b`: `["a", "b"]`; never a
    mapping's values, which may be secrets), else a placeholder."""
    items = [get_args(tp)[0] for tp in types_at(loc) if get_origin(tp) in (list, set, tuple) and get_args(tp)]
    if not items:
        section = any(isinstance(tp, type) and issubclass(tp, BaseModel) for tp in types_at(loc))
        return ("a section" if section else "a mapping"), '{"<key>": <value>}'
    if isinstance(items[0], type) and issubclass(items[0], BaseModel):
        return "a list", _BACKENDS_EXAMPLE if items[0] is BackendConfig else '[{"<key>": <value>}]'
    words = [part.strip().strip("'\"") for part in written.strip().strip("[]").split(",")]
    return "a list", json.dumps([word for word in words if word] or ["<value>"])


_BACKENDS_EXAMPLE = '[{"name": "time", "command": "uvx", "args": ["mcp-server-time"]}]'


def by_index(loc: Location, source: SourceNamer | None) -> str | None:
    """`VMCP_BACKENDS__0__COMMAND`: pydantic-settings reads a list's variables by index as a mapping, which
    no list takes. The list is given whole, in its own variable."""
    origin = source(loc) if source is not None else None
    names = sorted(n for n in os.environ if origin and n.upper().startswith(f"{origin.upper()}__"))
    if origin is None or not origin.upper().startswith(ENV_PREFIX) or not names:
        return None
    example = _json_example(loc, "")[1]
    return f"{', '.join(names)}: a list is set whole, as JSON, in {origin} (replacing the file's): {origin}='{example}'"


def mapping_keys_one_by_one() -> list[str]:
    """`VMCP_RATE_LIMITS__PER_TOOL__<TOOL>__RATE`: a variable reaching inside a mapping keyed by names the user
    chose (`rate_limits.per_tool`, `aggregation.tools`). pydantic-settings reads it, lower-casing the key, so a
    limit on `Clock_get_current_time` would silently never apply: such a mapping is given whole, as JSON."""
    by_mapping: dict[Location, list[str]] = {}
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        depth = _mapping_entered(parts)
        if depth is not None:
            by_mapping.setdefault(tuple(parts[:depth]), []).append(name)
    return [_one_by_one_message(loc, names) for loc, names in by_mapping.items()]


def _mapping_entered(parts: list[str]) -> int | None:
    """How many of `parts` lead to a mapping field when more parts follow, naming a key inside it; None when
    they name no such field (a list's parts are `by_index`'s; an unknown key is pydantic's to report)."""
    for depth in range(1, len(parts)):
        found = types_at(tuple(parts[:depth]))
        if any(get_origin(tp) is dict for tp in found):
            return depth
        models = [tp for tp in found if isinstance(tp, type) and issubclass(tp, BaseModel)]
        if not any(parts[depth] in model.model_fields for model in models):
            return None
    return None


def _one_by_one_message(loc: Location, names: list[str]) -> str:
    whole = ENV_PREFIX + "__".join(str(part) for part in loc).upper()
    values = [get_args(tp)[1] for tp in types_at(loc) if get_origin(tp) is dict and len(get_args(tp)) == 2]
    nested = any(isinstance(tp, type) and issubclass(tp, BaseModel) for tp in values)
    example = '{"<name>": {"<key>": <value>}}' if nested else '{"<name>": <value>}'
    return (
        f"{', '.join(names)}: {format_location(loc)} is keyed by names, which a variable per key would "
        f"lower-case; give the mapping whole, as JSON, in {whole}: {whole}='{example}'"
    )
