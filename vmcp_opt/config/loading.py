"""Loading: the file, environment and flags merged into a `VmcpConfig`; every problem reported by its path,
`${VAR}` references resolved (refused in a setting nothing expands), discovered backends merged in.

Past ~450 lines on purpose: every source's problems (the file's syntax and repeated keys, unset references,
the environment's and the flags' values, pydantic's) are gathered into one list in one pass, so the parts
that find them share the one path-naming scheme kept here."""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import EnvSettingsSource, SettingsError

from vmcp_opt.config.base import (
    DEFAULT_CONFIG_PATH,
    ENV_REFERENCE,
    SECRET_NAME,
    ConfigError,
)
from vmcp_opt.config.document import VmcpConfig, _duplicate_names, _file_data
from vmcp_opt.config.file_parsing import parse_json, parse_yaml, references_in
from vmcp_opt.config.optimizer import OptimizerConfig
from vmcp_opt.config.sections import (
    BackendConfig,
)
from vmcp_opt.config.suggestions import closest
from vmcp_opt.config.workflows import raw_workflow_problems, unchecked_workflow_problems

# (the client file, the config's own backend names: a discovered server under one of them is left out, and said so)
ClientConfigReader = Callable[[Path, Collection[str]], Sequence[BackendConfig]]
# Why a model id names no usable model, or None (`optimizer.model_registry.model_problem`).
ModelCheck = Callable[[str], str | None]
Location = tuple[int | str, ...]
# Where the value at a location came from (`--port`, `VMCP_SERVER__PORT`), or None for the file and defaults.
SourceNamer = Callable[[Location], str | None]
ENV_PREFIX = VmcpConfig.model_config.get("env_prefix", "")
# `${VMCP_DATA_DIR}` in a backend field is the gateway's data directory (`data_dir`, else the per-user one),
# set in the environment or not: a backend keeping a file of its own state (the demo's memory server) keeps
# it per user, beside the gateway's, rather than at a path every user and clone of the machine shares.
DATA_DIR_REFERENCE = "VMCP_DATA_DIR"


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    discover: ClientConfigReader | None = None,
    check_model: ModelCheck | None = None,
    flags: Mapping[str, str] | None = None,
) -> VmcpConfig:
    """Read, merge and validate the configuration; raise `ConfigError` listing every bad field.

    `discover` reads the client config file of discovered mode (`backends.discovery.read_client_config`,
    passed by the `vmcp` command: this module knows no client format); a discovered-mode config without it
    is an error rather than a gateway with no backends. `check_model` resolves `optimizer.model` (passed by
    the `vmcp` command as well: the registry is the optimizer's), so a misspelt model fails here, not at start.
    `flags` names the command-line flag behind each override by its dotted path (`server.port`: `--port`), so a
    bad value is reported by where it came from, as one from an environment variable is.
    """
    misspelt = _unknown_env_sections()  # ignored by pydantic-settings: reported with everything else
    try:
        config = _load(path, overrides or {}, discover, check_model, flags or {})
    except ConfigError as exc:
        raise ConfigError(misspelt + exc.problems) from None
    if misspelt:
        raise ConfigError(misspelt)
    return config


def _load(
    path: str | Path | None,
    overrides: dict[str, Any],
    discover: ClientConfigReader | None,
    check_model: ModelCheck | None,
    flags: Mapping[str, str],
) -> VmcpConfig:
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data, repeated = _read_document(config_path)
    # A key written twice is reported with every other problem of the file, not alone before them: one pass.
    try:
        config = _validated(config_path, data, overrides, discover, check_model, flags)
    except ConfigError as exc:
        raise ConfigError(repeated + exc.problems) from None
    if repeated:
        raise ConfigError(repeated)
    return config


def _validated(
    config_path: Path,
    data: dict[str, Any],
    overrides: dict[str, Any],
    discover: ClientConfigReader | None,
    check_model: ModelCheck | None,
    flags: Mapping[str, str],
) -> VmcpConfig:
    source = _source_namer(overrides, data, flags)
    # Before base_dir is filled in: the config file's own directory is no text the user wrote.
    literal = _literal_references([("flag", overrides), ("env", _env_layer()), ("file", data)], source)
    data.setdefault("base_dir", str(config_path.resolve().parent))
    token = _file_data.set(data)
    try:
        config = VmcpConfig(**overrides)
    except SettingsError as exc:
        raise ConfigError([_unparsable(exc)]) from None
    except ValidationError as exc:
        raw = {key: overrides.get(key, data.get(key)) for key in ("backends", "workflows")}
        problems = _every_problem(exc, raw["backends"], raw["workflows"], source)
        problems += _raw_model_problems(exc, overrides, data, check_model, source)
        raise ConfigError(problems + literal) from None
    finally:
        _file_data.reset(token)
    problems = _model_problems(config.optimizer.model, check_model, source) + literal
    if config.discovery.mode == "discovered":
        if discover is None:
            raise ConfigError(["discovery.mode: discovered, but this command reads no client config files"])
        try:
            config = _with_discovered_backends(config, discover)
        except ConfigError as exc:
            raise ConfigError(exc.problems + problems) from None
    config._source = config_path.resolve()
    try:
        config = _with_env_references_resolved(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config


def _model_problems(model: str, check_model: ModelCheck | None, source: SourceNamer) -> list[str]:
    problem = check_model(model) if check_model is not None else None
    return [f"{_placed(('optimizer', 'model'), source)}: {problem}"] if problem else []


def _raw_model_problems(
    exc: ValidationError,
    overrides: dict[str, Any],
    data: dict[str, Any],
    check_model: ModelCheck | None,
    source: SourceNamer,
) -> list[str]:
    """`optimizer.model` checked when another field failed: the model is otherwise checked only on a valid
    document, so a bad `model_cache` hid a misspelt model until the next run. Read from the sources in
    `VmcpConfig`'s precedence; a model pydantic itself refused (not a string) is already reported."""
    if any(loc[:2] == ("optimizer", "model") for loc in _locations(exc)):
        return []
    model: Any = OptimizerConfig.model_fields["model"].default
    for layer in (overrides, EnvSettingsSource(VmcpConfig)(), data):
        section = layer.get("optimizer")
        if isinstance(section, dict) and "model" in section:
            model = section["model"]
            break
    return _model_problems(model, check_model, source) if isinstance(model, str) else []


def _read_file(path: Path) -> dict[str, Any]:
    data, repeated = _read_document(path)
    if repeated:
        raise ConfigError(repeated)
    return data


def _read_document(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's mapping, and a problem for each key written twice in one mapping (the last one is kept)."""
    if not path.exists():
        raise ConfigError([f"{path}: no such config file"])
    if path.is_dir():
        raise ConfigError([f"{path}: cannot read: is a directory, not a config file"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        raise ConfigError([f"{path}: cannot read: not UTF-8 text ({where}); save it as UTF-8"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    data, repeated = parse_json(path, text) if path.suffix == ".json" else parse_yaml(path, text)
    problems = [f"{path}: {problem}" for problem in repeated]
    if data is None:
        return {}, problems
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, got {type(data).__name__}"])
    return data, problems


def raw_config(path: Path) -> dict[str, Any]:
    """The file as loading reads it (parsed, nothing checked): `ConfigError` when it cannot be read."""
    return _read_file(path)


def _describe(exc: ValidationError, source: SourceNamer | None = None) -> list[str]:
    problems = []
    for error in exc.errors():
        location = _format_location(error["loc"])
        message = error["msg"]
        if error["type"] == "value_error":  # our validators' own reasons: `path: reason`, like every other line
            message = message.removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unknown_key(tuple(error["loc"]), source)
        if error["type"] == "string_type":
            message += _unquoted(error.get("input"))
        if error["type"] == "literal_error":
            message += _meant_value(error)
        if (
            error["type"] == "list_type"
            and tuple(error["loc"]) == ("backends",)
            and isinstance(error.get("input"), dict)
        ):
            # `backends: {time: {...}}`, as MCP clients key their servers by name
            message += ", not a mapping: write each entry as a list item (`- name: ...`)"
        if not location:  # the document's own cross-checks: already `path: reason`, one per line
            problems.extend(message.splitlines())
            continue
        if error["type"] == "value_error" and _RELATIVE_PROBLEM.match(message):
            # A section's own cross-checks (workflows, a backend's transport): `relative.path: reason` lines
            # under its location.
            problems.extend(f"{location}.{line}" for line in message.splitlines())
            continue
        problems.append(f"{_placed(error['loc'], source)}: {message}")
    return problems


def _unknown_key(loc: Location, source: SourceNamer | None) -> str:
    """The key meant, when the model at that place has one spelt closely (`comand`: `command`); spelt as the
    variable to set when the key came from its own `VMCP_` variable."""
    key = str(loc[-1])
    close = closest(key, _keys_at(loc[:-1]))
    if not close:
        return _UNKNOWN_KEY
    origin = source(loc) if source is not None else None
    if origin and origin.upper().endswith("__" + key.upper()):  # not a section's JSON, which holds the key
        return f"unknown key (did you mean {origin[: -len(key)]}{close[0].upper()}?)"
    return f"unknown key (did you mean {close[0]!r}?)"


_UNKNOWN_KEY = "unknown key (check the spelling; unknown keys are not allowed)"


def _keys_at(loc: Location) -> list[str]:
    """The keys the models at `loc` accept, found by following `VmcpConfig`'s field types along it; a part
    that names no field (a union's tag, a validator's marker) is passed over."""
    found: list[Any] = [VmcpConfig]
    for part in loc:
        found = [t for tp in found for t in _unwrapped(tp)]
        if isinstance(part, int):
            found = [get_args(t)[0] for t in found if get_origin(t) in (list, tuple) and get_args(t)]
            continue
        step = [_field_type(t, part) for t in found]
        if any(t is not None for t in step):
            found = [t for t in step if t is not None]
    models = [t for tp in found for t in _unwrapped(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    return [name for model in models for name in model.model_fields]


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


def _unquoted(value: Any) -> str:
    """Why a value written as text is not a string: YAML reads `8080`, `1.10` and `yes`/`on`/`true` unquoted
    as a number or a boolean (`env: {PORT: 8080}`, `args: [--port, 8080]`), which no `env` or `args` takes."""
    if isinstance(value, bool):
        return f", got the boolean {str(value).lower()} (YAML reads an unquoted yes, no, on, off, true or false so): write it in quotes"
    if isinstance(value, int | float):
        return f", got the number {value}: write it in quotes to pass it as text"
    return ""


def _meant_value(error: ErrorDetails) -> str:
    """The allowed value a misspelt one was meant to be (`on_error: retyr`: 'retry'), from the values the
    error lists; "" when none is close."""
    written = error.get("input")
    expected = error.get("ctx", {}).get("expected", "")
    if not isinstance(written, str) or not isinstance(expected, str):
        return ""
    close = closest(written, re.findall(r"'([^']*)'", expected), cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_RELATIVE_PROBLEM = re.compile(r"^(steps|parameters|output|url|command)[\w.\[\]]*: ")


def _every_problem(
    exc: ValidationError, raw_backends: Any, raw_workflows: Any, source: SourceNamer | None = None
) -> list[str]:
    """The fields' errors and, in the same pass, what pydantic checks only once every field is valid (names
    used twice, a workflow's graph and templates) and what is checked after validation (unset `${VAR}`s),
    read from the raw backends and workflows."""
    problems = _describe(exc, source)
    # A workflow with a bad field skipped its own checks: they run on its raw definition.
    workflows = _list(raw_workflows)
    unchecked = {loc[1] for loc in _locations(exc) if len(loc) > 2 and loc[0] == "workflows"}
    for index in sorted(i for i in unchecked if isinstance(i, int) and i < len(workflows)):
        problems += [f"workflows[{index}].{line}" for line in unchecked_workflow_problems(workflows[index])]
    backends = dict(enumerate(_list(raw_backends)))
    if all(_locations(exc)):  # the model's cross-checks did not run
        names = [b.get("name") for b in backends.values() if isinstance(b, dict)]
        problems += _duplicate_names([name for name in names if isinstance(name, str)])
        problems += raw_workflow_problems(workflows)  # repeated names, cycles across workflows
    for index, backend in backends.items():
        if not isinstance(backend, dict):
            continue
        where = f"backends[{index}]"
        fields = [(f"{where}.{kind}.{k}", v) for kind in ("env", "headers") for k, v in _items(backend.get(kind))]
        fields += [(f"{where}.args[{i}]", arg) for i, arg in enumerate(_list(backend.get("args")))]
        fields.append((f"{where}.url", backend.get("url")))
        for place, value in fields:
            if isinstance(value, str):
                problems += [_unset(place, name) for name in ENV_REFERENCE.findall(value) if not _is_set(name)]
    return list(dict.fromkeys(problems))


def _locations(exc: ValidationError) -> list[Location]:
    return [tuple(error["loc"]) for error in exc.errors()]


def _placed(loc: Location, source: SourceNamer | None) -> str:
    """`server.port`, or `server.port (from --port)` when the value came from a flag or a variable (the
    heading names the file)."""
    origin = source(loc) if source is not None else None
    return f"{_format_location(loc)} (from {origin})" if origin else _format_location(loc)


def _source_namer(overrides: dict[str, Any], data: dict[str, Any], flags: Mapping[str, str]) -> SourceNamer:
    """Where the value at a location came from: its flag, its `VMCP_` variable, or None (the file, a default)."""

    @functools.cache
    def layers() -> list[tuple[str, Any]]:  # highest precedence first, as `VmcpConfig`'s sources
        return [("flag", overrides), ("env", EnvSettingsSource(VmcpConfig)()), ("file", data)]

    def name(loc: Location) -> str | None:
        owner = _owner(loc, layers())
        if owner is None or owner[0] == "file":
            return None
        layer, where = owner
        dotted = _format_location(where)
        return flags.get(dotted, "overrides") if layer == "flag" else _env_name(where)

    return name


def _owner(loc: Location, layers: list[tuple[str, Any]]) -> tuple[str, Location] | None:
    """The layer that set the value at `loc`, and the location it set whole. Layers merge mapping by
    mapping (pydantic-settings' deep update); any other value hides those below it. None: a default, or
    mappings of several layers meet there."""
    for depth, part in enumerate(loc):
        layers = [(name, value[part]) for name, value in layers if isinstance(value, dict) and part in value]
        if not layers:
            return None
        if not isinstance(layers[0][1], dict):
            return layers[0][0], loc[: depth + 1]
        layers = [(name, value) for name, value in layers if isinstance(value, dict)]
    return (layers[0][0], loc) if len(layers) == 1 else None


def _env_name(where: Location) -> str:
    """The variable that set `where`: `VMCP_SERVER__PORT`, or a whole section's JSON (`VMCP_BACKENDS`), as
    spelt in the environment (the prefix and names are case-insensitive)."""
    keys = [str(part) for part in where if isinstance(part, str)]
    spelt = {name.upper(): name for name in os.environ}
    for depth in range(len(keys), 0, -1):
        candidate = ENV_PREFIX + "__".join(keys[:depth]).upper()
        if candidate in spelt:
            return spelt[candidate]
    return ENV_PREFIX + "__".join(keys).upper()


def _unknown_env_sections() -> list[str]:
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


def _unparsable(exc: SettingsError) -> str:
    """A `VMCP_` variable that pydantic-settings could not decode (JSON, for a list or a mapping)."""
    field = re.search(r'field "(\w+)"', str(exc))
    if field is None:
        return f"{ENV_PREFIX}*: {exc}"
    whole = ENV_PREFIX + field.group(1).upper()  # the section as JSON, else one of its nested variables
    name = next((name for name in os.environ if name.upper() == whole), f"{whole}__*")
    return f"{name}: cannot read the value: {exc.__cause__ or exc}"


def _is_set(name: str) -> bool:
    return name in os.environ or name == DATA_DIR_REFERENCE


def _unset(where: str, name: str) -> str:
    return f"{where}: references ${{{name}}}, which is not set in the environment"


def _items(value: Any) -> list[tuple[str, Any]]:
    return [(str(key), item) for key, item in value.items()] if isinstance(value, dict) else []


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after[_transport_fields()]",) or part.startswith(("function-", "tagged-union")):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


# Where `${VAR}` is expanded (`_with_env_references_resolved`), and a backend's description: free text.
_BACKEND_REFERENCE_FIELDS = frozenset({"env", "headers", "args", "url", "description"})


def _literal_references(layers: list[tuple[str, Any]], source: SourceNamer) -> list[str]:
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
        f"{_placed(loc, source)}: {' and '.join(found)} is not expanded in this setting, so it would be used as written"
    )
    key = str(loc[-1])
    if key == "env" or key.endswith("_env"):  # `password_env: ${REDIS_PASSWORD}`
        return f"{said}; this setting takes the variable's name: write it without ${{ }}"
    ways = "Write the value itself"
    if all(isinstance(part, str) for part in loc):
        ways += f", or set {_env_name(loc)} (docs/configuration.md) to the value from a shell, which expands {found[0]}"
    secrets = [name for name in _keys_at(loc[:-1]) if name.endswith("_env")]
    if secrets:
        ways += f"; a secret is read from the variable named in {' or '.join(secrets)}"
    return f"{said}; ${{VAR}} is expanded only in a backend's env, headers, args and url. {ways}"


def _env_layer() -> dict[str, Any]:
    """The `VMCP_` variables as settings; a variable that cannot be read is reported when the config is built."""
    try:
        return EnvSettingsSource(VmcpConfig)()
    except SettingsError:
        return {}


def _with_discovered_backends(config: VmcpConfig, discover: ClientConfigReader) -> VmcpConfig:
    assert config.discovery.path is not None
    client_file = config.resolve_path(config.discovery.path)
    inline = {backend.name for backend in config.backends}
    try:
        discovered = discover(client_file, inline)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"discovery.path: {exc}"]) from None
    merged = list(config.backends) + [backend for backend in discovered if backend.name not in inline]
    data = config.model_dump()
    data["backends"] = [backend.model_dump() for backend in merged]
    try:
        return VmcpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{p} (from {client_file})" for p in _describe(exc)]) from None


def _with_env_references_resolved(config: VmcpConfig) -> VmcpConfig:
    """Expand `${VAR}` in backend env, headers, args and url, so secrets stay out of config files;
    `${VMCP_DATA_DIR}` is the gateway's data directory (`DATA_DIR_REFERENCE`)."""
    problems: list[str] = []

    def expand(value: str, where: str, referenced: set[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == DATA_DIR_REFERENCE:  # a place, not a secret: not masked in the backend's logs
                return _data_dir(config, where, problems)
            if name not in os.environ:
                problems.append(_unset(where, name))
                return ""
            referenced.add(os.environ[name])
            return os.environ[name]

        return ENV_REFERENCE.sub(replace, value)

    for index, backend in enumerate(config.backends):
        where, seen = f"backends[{index}]", backend._referenced
        backend.env = {k: expand(v, f"{where}.env.{k}", seen) for k, v in backend.env.items()}
        backend.headers = {k: expand(v, f"{where}.headers.{k}", seen) for k, v in backend.headers.items()}
        problems.extend(_secrets_in_args(backend.args, f"{where}.args"))
        backend.args = [expand(arg, f"{where}.args[{i}]", seen) for i, arg in enumerate(backend.args)]
        if backend.url:
            backend.url = expand(backend.url, f"{where}.url", seen)
        problems.extend(backend.auth.check(f"{where}.auth", backend.transport, Path(config.base_dir)))
    if problems:
        raise ConfigError(problems)
    return config


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
