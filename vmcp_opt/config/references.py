"""References: a setting named by its path and by the `VMCP_` variable that sets it, and `${VAR}` references to
the environment (`${VAR:-default}` and `${VAR-default}` too, base.py's `ENV_REFERENCE`): expanded in a backend's
env, headers, args and url, refused where nothing expands them, and a `$VAR` written there warned of (never showing
a secret's place: `is_secret_env`, `option_values`, which backends/secrets.py masks by too); and the settings of the
file a `VMCP_` variable overrides (`env_overrides`, said as warnings).

Out of loading.py, which imports these: loading gathers every source's problems in one pass, and names them
by the same scheme (`server.port (from VMCP_SERVER__PORT)`)."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from vmcp_opt.config.base import (
    ENV_REFERENCE,
    ENV_REFERENCE_PARTS,
    SECRET_NAME,
    ConfigError,
    invalid_references,
)
from vmcp_opt.config.document import VmcpConfig
from vmcp_opt.config.file_parsing import references_in

Location = tuple[int | str, ...]
# Where the value at a location came from (`--port`, `VMCP_SERVER__PORT`), or None for the file and defaults.
SourceNamer = Callable[[Location], str | None]
ENV_PREFIX = VmcpConfig.model_config.get("env_prefix", "")
# `${VMCP_DATA_DIR}` in a backend field is the gateway's data directory (`data_dir`, else the per-user one),
# set in the environment or not: a backend keeping a file of its own state (the demo's memory server) keeps
# it per user, beside the gateway's, rather than at a path every user and clone of the machine shares.
DATA_DIR_REFERENCE = "VMCP_DATA_DIR"
# Env names `SECRET_NAME` matches that hold no secret: the shell's working directories (a path, which masking would
# garble in every line that names a file under it).
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})
_PASSWORD_PART = re.compile(r"(?:^|_)PWD(?:_|$)", re.I)  # `PWD_HASH`, `PWD_FILE`: a password's, not a directory's
# An argv option naming a secret, its value in the same item (`--token=abc`) or the next (`--password`, `abc`).
_SECRET_OPTION = re.compile(r"-{1,2}(?P<name>[A-Za-z][\w.-]*)(?:=(?P<value>.*))?", re.S)


def format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after[_transport_fields()]",) or part.startswith(("function-", "tagged-union")):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def placed(loc: Location, source: SourceNamer | None) -> str:
    """`server.port`, or `server.port (from --port)` when the value came from a flag or a variable (the
    heading names the file)."""
    origin = source(loc) if source is not None else None
    return f"{format_location(loc)} (from {origin})" if origin else format_location(loc)


def env_name(where: Location) -> str:
    """The variable that set `where`: `VMCP_SERVER__PORT`, or a whole section's JSON (`VMCP_BACKENDS`), as
    spelt in the environment (the prefix and names are case-insensitive)."""
    keys = [str(part) for part in where if isinstance(part, str)]
    spelt = {name.upper(): name for name in os.environ}
    for depth in range(len(keys), 0, -1):
        candidate = ENV_PREFIX + "__".join(keys[:depth]).upper()
        if candidate in spelt:
            return spelt[candidate]
    return ENV_PREFIX + "__".join(keys).upper()


def keys_at(loc: Location) -> list[str]:
    """The keys the models at `loc` accept."""
    models = [t for t in types_at(loc) if isinstance(t, type) and issubclass(t, BaseModel)]
    return [name for model in models for name in model.model_fields]


def types_at(loc: Location) -> list[Any]:
    """The types a value at `loc` may have (a union's members, `None` left out), found by following
    `VmcpConfig`'s field types along it; a part that names no field (a union's tag, a validator's marker) is
    passed over."""
    found: list[Any] = [VmcpConfig]
    for part in loc:
        found = [t for tp in found for t in _unwrapped(tp)]
        if isinstance(part, int):
            found = [get_args(t)[0] for t in found if get_origin(t) in (list, tuple) and get_args(t)]
            continue
        step = [_field_type(t, part) for t in found]
        if any(t is not None for t in step):
            found = [t for t in step if t is not None]
    return [t for tp in found for t in _unwrapped(tp)]


def _field_type(tp: Any, key: str) -> Any:
    """The type at `key` inside `tp`: a model's field or a mapping's value; None if `tp` has no such key."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(key)
        return field.annotation if field is not None else None
    if get_origin(tp) is dict and len(get_args(tp)) == 2:
        return get_args(tp)[1]
    return None


def _unwrapped(tp: Any) -> list[Any]:
    """The members of `X | None` and other unions, `Annotated` stripped; any other type alone."""
    if get_origin(tp) is Annotated:
        return _unwrapped(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [t for arg in get_args(tp) for t in _unwrapped(arg) if t is not type(None)]
    return [tp]


# Where `${VAR}` is expanded (`with_env_references_resolved`), and a backend's description: free text.
_BACKEND_REFERENCE_FIELDS = frozenset({"env", "headers", "args", "url", "description"})


def literal_references(layers: list[tuple[str, Any]], source: SourceNamer) -> list[str]:
    """`${X}` in a setting nothing expands, refused: it would be used as written (`serve` made directories
    named `${LOG_DIR}`). Not searched: the fields that expand it, and text that may say `${X}` as it is (workflow
    templates, where one is warned of, and descriptions). Only the value in effect: a layer may hide another's."""
    problems = []
    for name, layer in layers:
        for loc, found in references_in(layer):
            if not _free_text(loc) and _setter(loc, layers) == name:
                problems.append(_literal_reference(loc, found, source))
    return list(dict.fromkeys(problems))


def _setter(loc: Location, layers: list[tuple[str, Any]]) -> str | None:
    """The layer whose value is used at `loc`: mappings merge, anything else (a list, a text) hides the lower
    layers' (`_owner` names no layer inside a list)."""
    for name, value in layers:
        for part in loc:
            if not isinstance(value, dict):
                return name
            if part not in value:
                break
            value = value[part]
        else:
            return name
    return None


def _free_text(loc: Location) -> bool:
    if loc[:1] == ("workflows",) or loc[-1:] == ("description",):
        return True
    return loc[:1] == ("backends",) and len(loc) > 2 and loc[2] in _BACKEND_REFERENCE_FIELDS


def _literal_reference(loc: Location, found: list[str], source: SourceNamer) -> str:
    """The problem, with the ways to give the value: as written, or (a single setting, not a list's item)
    through its `VMCP_` variable, from a shell that expands the reference; a secret through the setting that
    names its variable (`password_env`), where the section has one."""
    said = (
        f"{placed(loc, source)}: {' and '.join(found)} is not expanded in this setting, so it would be used as written"
    )
    key = str(loc[-1])
    if key == "env" or key.endswith("_env"):  # `password_env: ${REDIS_PASSWORD}`
        return f"{said}; this setting takes the variable's name: write it without ${{ }}"
    ways = "Write the value itself"
    if all(isinstance(part, str) for part in loc):
        ways += f", or set {env_name(loc)} (docs/configuration.md) to the value from a shell, which expands {found[0]}"
    secrets = [name for name in keys_at(loc[:-1]) if name.endswith("_env")]
    if secrets:
        ways += f"; a secret is read from the variable named in {' or '.join(secrets)}"
    return f"{said}; ${{VAR}} is expanded only in a backend's env, headers, args and url. {ways}"


def _is_set(name: str) -> bool:
    return name in os.environ or name == DATA_DIR_REFERENCE


def unset(where: str, name: str) -> str:
    return f"{where}: references ${{{name}}}, which is not set in the environment"


def malformed(where: str, text: str) -> list[str]:
    """A `${` that starts no reference, said by its form: it would reach the backend as written."""
    return [
        f"{where}: {form}; write ${{NAME}}, ${{NAME:-default}} (unset or empty) or ${{NAME-default}} (unset)"
        for form in invalid_references(text)
    ]


def unset_references(raw_backends: Any) -> list[str]:
    """Each `${VAR}` in a raw backend's env, headers, args or url whose variable is not set: read from the file's
    backends when validation failed, so they are reported with the fields' errors in one pass."""
    problems = []
    for index, backend in enumerate(raw_backends if isinstance(raw_backends, list) else []):
        if not isinstance(backend, dict):
            continue
        where = f"backends[{index}]"
        fields = [(f"{where}.{kind}.{k}", v) for kind in ("env", "headers") for k, v in _items(backend.get(kind))]
        fields += [(f"{where}.args[{i}]", arg) for i, arg in enumerate(_list(backend.get("args")))]
        fields.append((f"{where}.url", backend.get("url")))
        for place, value in fields:
            if isinstance(value, str):
                refused = malformed(place, value)  # what it holds is not read as references
                problems += refused or [
                    unset(place, found["name"])
                    for found in ENV_REFERENCE_PARTS.finditer(value)
                    if found["op"] is None and not _is_set(found["name"])
                ]
    return problems


def _items(value: Any) -> list[tuple[str, Any]]:
    return [(str(key), item) for key, item in value.items()] if isinstance(value, dict) else []


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def with_env_references_resolved(config: VmcpConfig) -> VmcpConfig:
    """Expand `${VAR}` (and its defaults) in backend env, headers, args and url, so secrets stay out of config
    files; `${VMCP_DATA_DIR}` is the gateway's data directory (`DATA_DIR_REFERENCE`). A `${` that starts no
    reference is a problem, not text to send."""
    problems: list[str] = []

    def expand(value: str, where: str, referenced: set[str], secret_place: bool = False) -> str:
        refused = malformed(where, value)
        if refused:  # not sent: the config is refused
            problems.extend(refused)
            return value

        def replace(match: re.Match[str]) -> str:
            name, op, default = match["name"], match["op"], match["default"]
            if name == DATA_DIR_REFERENCE:  # a place, not a secret: not masked in the backend's logs
                return _data_dir(config, where, problems)
            found = os.environ.get(name)
            if found is not None and not (found == "" and op == ":-"):
                referenced.add(found)
                return found
            if op is None:
                problems.append(unset(where, name))
                return ""
            if SECRET_NAME.search(name) or secret_place:  # a stand-in for the secret (`${TOKEN:-dev}`): masked as one
                referenced.add(default)
            return str(default)

        return ENV_REFERENCE_PARTS.sub(replace, value)

    for index, backend in enumerate(config.backends):
        where, seen = f"backends[{index}]", backend._referenced
        env, secret_args = backend.env, _secret_arg_positions(backend.args)
        backend.env = {k: expand(v, f"{where}.env.{k}", seen, is_secret_env(k)) for k, v in env.items()}
        backend.headers = {k: expand(v, f"{where}.headers.{k}", seen, True) for k, v in backend.headers.items()}
        problems.extend(_secrets_in_args(backend.args, f"{where}.args"))
        backend.args = [expand(arg, f"{where}.args[{i}]", seen, i in secret_args) for i, arg in enumerate(backend.args)]
        if backend.url:
            backend.url = expand(backend.url, f"{where}.url", seen, False)
        problems.extend(backend.auth.check(f"{where}.auth", backend.transport, Path(config.base_dir)))
    if problems:
        raise ConfigError(problems)
    return config


# `$NAME` where only `${NAME}` expands: a common slip, but a `$` is legal text, so a warning. Not after a word
# character or a `$` (`pa$word`, `$$X`), which is seldom a variable.
_BARE_VARIABLE = re.compile(r"(?<![$\w])\$([A-Za-z_][A-Za-z0-9_]*)")
# A name written as environment variables are (`API_KEY`): the only kind said back when the variable is not set.
_VARIABLE_LIKE = re.compile(r"[A-Z_][A-Z0-9_]*")


def bare_variable_warnings(config: VmcpConfig) -> list[str]:
    """Each `$NAME` in a backend's env, headers, args or url (read before expansion), by its field. The name is
    said only where it cannot be part of a secret: never in a secret's place (a header, a secret-named env key
    such as `API_TOKEN`, a secret option's value such as `--api-key <value>`, text naming a secret or holding
    `user@`), and elsewhere only when the variable is set or is written as one (`$API_URL`, not `$k3yMaterial`)."""
    warnings: list[str] = []
    for index, backend in enumerate(config.backends):
        where, secret_args = f"backends[{index}]", _secret_arg_positions(backend.args)
        fields = [(f"{where}.env.{k}", v, is_secret_env(k)) for k, v in backend.env.items()]
        fields += [(f"{where}.headers.{k}", v, True) for k, v in backend.headers.items()]
        fields += [(f"{where}.args[{i}]", arg, i in secret_args) for i, arg in enumerate(backend.args)]
        fields += [(f"{where}.url", backend.url, False)] if backend.url else []
        for place, value, secret_place in fields:
            secret = secret_place or SECRET_NAME.search(value) is not None or "@" in value
            for name in dict.fromkeys(_BARE_VARIABLE.findall(ENV_REFERENCE.sub("", value))):
                said = not secret and (name in os.environ or _VARIABLE_LIKE.fullmatch(name) is not None)
                warnings.append(_bare_variable(place, name if said else None))
    return list(dict.fromkeys(warnings))


def _secret_arg_positions(args: list[str]) -> set[int]:
    """The args holding a secret option's value (`--api-key`, `<value>` or `--token=<value>`), as secrets.py's
    `option_values` (what masking hides) finds them: a warning must not show what the logs would hide."""
    return {
        i for i, arg in enumerate(args) if option_values([arg]) or (i > 0 and arg in option_values([args[i - 1], arg]))
    }


def is_secret_env(name: str) -> bool:
    """Whether an environment variable's value is a secret by its name (`API_TOKEN`, `DB_PWD`; not `PWD`)."""
    if name in _NOT_SECRET_ENV:
        return False
    return SECRET_NAME.search(name) is not None or _PASSWORD_PART.search(name) is not None


def option_values(args: Iterable[str]) -> list[str]:
    """The values of an argv's secret-named options (`--token=abc`, `--password abc` as two items): a process may
    print its command line, and an error may quote it (backends/secrets.py masks them)."""
    found: list[str] = []
    named = False  # the item before was a secret's option without its value
    for arg in args:
        if named and not arg.startswith("-"):
            found.append(arg)
        option = _SECRET_OPTION.fullmatch(arg)
        secret = option is not None and SECRET_NAME.search(option.group("name").replace("-", "_")) is not None
        named = secret and option is not None and option.group("value") is None
        if secret and option is not None and option.group("value"):
            found.append(option.group("value"))
    return found


def _bare_variable(where: str, name: str | None) -> str:
    if name is None:
        return f"{where}: a `$` before a name is used as written: only ${{NAME}} is expanded (if it names a variable, write ${{NAME}})"
    return f"{where}: ${name} is used as written: only ${{NAME}} is expanded (did you mean ${{{name}}}?)"


def _data_dir(config: VmcpConfig, where: str, problems: list[str]) -> str:
    """The data directory, created if missing: a backend told to keep a file there (the demo's memory server)
    fails its first write when the directory does not exist, and may write before the gateway itself does."""
    directory = config.data_dir_path()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problems.append(
            f"{where}: ${{{DATA_DIR_REFERENCE}}} is {directory}, which cannot be created: {exc.strerror or exc}"
        )
    return str(directory)


def _secrets_in_args(args: list[str], where: str) -> list[str]:
    """A secret-looking `${VAR}` in `args` would sit on the command line, readable by every local user."""
    return [
        f"{where}[{i}]: ${{{name}}} would put a secret on the backend's command line, where any local user "
        f"can read it (ps); pass it in `env` instead (env: {{{name}: '${{{name}}}'}}) for the backend to read"
        for i, arg in enumerate(args)
        for name in ENV_REFERENCE.findall(arg)
        if SECRET_NAME.search(name)
    ]


# Overridden settings named one by one, a line each; past it, one line counts the rest (a whole section's JSON
# in one variable may replace many).
_MOST_OVERRIDES_NAMED = 20
# A value shown in an override's line is cut to this many characters.
_SHOWN_VALUE_CHARS = 120
# A URL's `user:password@` part.
_CREDENTIALS_IN_URL = re.compile(r"://[^/\s]*@")


def env_overrides(flags: dict[str, Any], env: dict[str, Any], file: dict[str, Any]) -> list[str]:
    """A line for each setting the file gives a value that a `VMCP_` variable replaces with another: the
    precedence stands (documented), but a baked-in `VMCP_DATA_DIR` silently put the index on an emptyDir while
    the file named a volume. A value a flag sets hides both and is not said. A secret's setting is named without
    either value."""
    replaced = list(_replaced(flags, env, file))
    lines = [_override_line(loc, value, written) for loc, value, written in replaced[:_MOST_OVERRIDES_NAMED]]
    if len(replaced) > _MOST_OVERRIDES_NAMED:
        rest = len(replaced) - _MOST_OVERRIDES_NAMED
        lines.append(f"and {rest} more settings of the config file overridden by {ENV_PREFIX} variables")
    return lines


def _replaced(
    flags: dict[str, Any], env: dict[str, Any], file: dict[str, Any], loc: Location = ()
) -> Iterator[tuple[Location, Any, Any]]:
    """(location, the variable's value, the file's) where they differ and the variable's is used. Mappings merge
    key by key (pydantic-settings' deep update); any other value hides the layers below it."""
    for key, value in env.items():
        if key not in file:
            continue
        written, above, here = file[key], flags.get(key), (*loc, key)
        if key in flags and not (isinstance(above, dict) and isinstance(value, dict)):
            continue  # the flag's value is used
        if isinstance(value, dict) and isinstance(written, dict):
            yield from _replaced(above if isinstance(above, dict) else {}, value, written, here)
        elif not _same(here, value, written):
            yield here, value, written


def _same(loc: Location, value: Any, written: Any) -> bool:
    """Equal as the setting reads them: `VMCP_SERVER__PORT=8000` is the file's `port: 8000`, `true` its `yes`."""
    if value == written:
        return True
    kinds = types_at(loc)
    if len(kinds) != 1:
        return False
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(kinds[0])
        return bool(adapter.validate_python(value) == adapter.validate_python(written))
    except (ValueError, TypeError):  # a value the setting refuses (reported at load), a type with no schema
        return False


def _override_line(loc: Location, value: Any, written: Any) -> str:
    setting, variable = format_location(loc), env_name(loc)
    shown = _shown(loc, value), _shown(loc, written)
    if shown[0] is None or shown[1] is None:
        said = f"{setting}: the config file's value is overridden by {variable}'s (values not shown)"
    else:
        said = f"{setting}: the config file sets {shown[1]}, but {variable} overrides it with {shown[0]}"
    return f"{said}; {ENV_PREFIX} variables outrank the file: unset {variable} to use the file's value"


def _shown(loc: Location, value: Any) -> str | None:
    """The value as it may be shown, or None: a secret's setting (`password_env`, `key_file`), a URL with
    credentials, a list or a mapping (a backend's headers and env hold secrets)."""
    key = str(next((part for part in reversed(loc) if isinstance(part, str)), ""))
    if SECRET_NAME.search(key) or key.endswith(("_env", "_file")) or isinstance(value, dict | list):
        return None
    text = repr(value)
    if _CREDENTIALS_IN_URL.search(text):
        return None
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[: _SHOWN_VALUE_CHARS - 1] + "…"
