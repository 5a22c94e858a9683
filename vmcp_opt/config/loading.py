"""Loading: the file, environment and flags merged into a `VmcpConfig`; every problem reported by its path,
`${VAR}` references resolved (refused in a setting nothing expands, a `$VAR` warned of: config/references.py),
discovered backends merged in. Every source's problems (the file's syntax and repeated keys, unset references, the environment's and
the flags' values, pydantic's) are gathered into one list in one pass, named by one scheme (references.py).

A `VMCP_` variable that overrides a value the file sets to something else is logged as a warning at load
(`env_overrides`): the precedence stands, but the image's `VMCP_DATA_DIR` silently put the index on an emptyDir
while the file named a volume."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import EnvSettingsSource, SettingsError

from vmcp_opt.config.base import DEFAULT_CONFIG_PATH, ConfigError
from vmcp_opt.config.document import VmcpConfig, _duplicate_names, _file_data, script_tool_warnings
from vmcp_opt.config.env_messages import by_index, env_variable_problems, unparsable
from vmcp_opt.config.file_parsing import parse_json, parse_yaml
from vmcp_opt.config.optimizer import OptimizerConfig
from vmcp_opt.config.references import (
    DATA_DIR_REFERENCE as DATA_DIR_REFERENCE,  # cli_serve.py reads it from here
)
from vmcp_opt.config.references import (
    Location,
    SourceNamer,
    bare_variable_warnings,
    env_name,
    env_overrides,
    format_location,
    keys_at,
    literal_references,
    placed,
    unset_references,
    with_env_references_resolved,
)
from vmcp_opt.config.sections import BackendConfig
from vmcp_opt.config.suggestions import closest
from vmcp_opt.config.workflows import raw_workflow_problems, unchecked_workflow_problems

logger = logging.getLogger(__name__)

# (the client file, the config's own backend names: a discovered server under one of them is left out, and said so)
ClientConfigReader = Callable[[Path, Collection[str]], Sequence[BackendConfig]]
# Why a model id names no usable model, or None (`optimizer.model_registry.model_problem`).
ModelCheck = Callable[[str], str | None]
# Takes what a valid configuration should still say (`load_config`'s `warn`).
Warn = Callable[[str], None]


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    discover: ClientConfigReader | None = None,
    check_model: ModelCheck | None = None,
    flags: Mapping[str, str] | None = None,
    warn: Warn | None = None,
) -> VmcpConfig:
    """Read, merge and validate the configuration; raise `ConfigError` listing every bad field.

    `discover` reads the client config file of discovered mode (`backends.discovery.read_client_config`,
    passed by the `vmcp` command: this module knows no client format); a discovered-mode config without it
    is an error rather than a gateway with no backends. `check_model` resolves `optimizer.model` (passed by
    the `vmcp` command as well: the registry is the optimizer's), so a misspelt model fails here, not at start.
    `flags` names the command-line flag behind each override by its dotted path (`server.port`: `--port`), so a
    bad value is reported by where it came from, as one from an environment variable is. `warn` is handed what
    a valid configuration should still say (a `VMCP_` variable overriding the file's value), once per process;
    by default it is logged as a warning; a command that reads the config before it configures its log format
    may pass one that holds the line until then (`logs.log_once_configured`).
    """
    misspelt = env_variable_problems()  # ignored or lower-cased by pydantic-settings: reported with the rest
    try:
        config = _load(path, overrides or {}, discover, check_model, flags or {}, warn or _log_warning)
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
    warn: Warn,
) -> VmcpConfig:
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data, repeated = _read_document(config_path)
    # A key written twice is reported with every other problem of the file, not alone before them: one pass.
    try:
        config = _validated(config_path, data, overrides, discover, check_model, flags, warn)
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
    warn: Warn,
) -> VmcpConfig:
    source = _source_namer(overrides, data, flags)
    # Before base_dir is filled in: the config file's own directory is no text the user wrote.
    env = _env_layer()
    literal = literal_references([("flag", overrides), ("env", env), ("file", data)], source)
    overridden = env_overrides(overrides, env, data)
    data.setdefault("base_dir", str(config_path.resolve().parent))
    token = _file_data.set(data)
    try:
        config = VmcpConfig(**overrides)
    except SettingsError as exc:
        raise ConfigError([unparsable(exc)]) from None
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
    bare = bare_variable_warnings(config)  # before expansion: a variable's value may hold `$`
    try:
        config = with_env_references_resolved(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    for warning in overridden + bare + script_tool_warnings(config):
        if warning not in _said:
            _said.add(warning)
            warn(warning)
    return config


# The warnings `warn` was handed in this process: a command that loads its config twice (`vmcp workflow run`)
# says each once. Bounded: a line per overridden setting, at most `env_overrides`' few.
_said: set[str] = set()


def _log_warning(warning: str) -> None:
    """With no logging configured (`vmcp validate`, and `vmcp serve` until the config names its log format)
    Python's last-resort handler writes the line on stderr as it is."""
    logger.warning("%s", warning)


def _model_problems(model: str, check_model: ModelCheck | None, source: SourceNamer) -> list[str]:
    problem = check_model(model) if check_model is not None else None
    return [f"{placed(('optimizer', 'model'), source)}: {problem}"] if problem else []


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
    # A Windows editor's UTF-8 byte-order mark: YAML skips it, Python's JSON parser refuses it.
    text = text.removeprefix("\ufeff")
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
        location = format_location(error["loc"])
        message = error["msg"]
        if error["type"] == "value_error":  # our validators' own reasons: `path: reason`, like every other line
            message = message.removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unknown_key(tuple(error["loc"]), source)
        if error["type"] == "string_type":
            message += _unquoted(error.get("input"))
        if error["type"] == "literal_error":
            message += _meant_value(error)
        indexed = by_index(tuple(error["loc"]), source) if error["type"] == "list_type" else None
        if indexed is not None and isinstance(error.get("input"), dict):  # `VMCP_BACKENDS__0__…`
            problems.append(indexed)
            continue
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
        problems.append(f"{placed(error['loc'], source)}: {message}")
    return problems


def _unknown_key(loc: Location, source: SourceNamer | None) -> str:
    """The key meant, when the model at that place has one spelt closely (`comand`: `command`); spelt as the
    variable to set when the key came from its own `VMCP_` variable."""
    key = str(loc[-1])
    close = closest(key, keys_at(loc[:-1]))
    if not close:
        return _UNKNOWN_KEY
    origin = source(loc) if source is not None else None
    if origin and origin.upper().endswith("__" + key.upper()):  # not a section's JSON, which holds the key
        return f"unknown key (did you mean {origin[: -len(key)]}{close[0].upper()}?)"
    return f"unknown key (did you mean {close[0]!r}?)"


_UNKNOWN_KEY = "unknown key (check the spelling; unknown keys are not allowed)"


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
    error lists, or a transport's other name (`http`); "" when none is close."""
    written = error.get("input")
    expected = error.get("ctx", {}).get("expected", "")
    if not isinstance(written, str) or not isinstance(expected, str):
        return ""
    allowed = re.findall(r"'([^']*)'", expected)
    if error["loc"][-1:] == ("transport",):
        alias = _transport_alias(written, allowed)
        if alias:
            return alias
    close = closest(written, allowed, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# What a transport is often called, by the value meant (the first one allowed), spelt as `_alias_key` spells it.
# No spelling measure finds them: `http` is far from `streamable-http`.
_TRANSPORT_ALIASES = {
    "streamablehttp": ("streamable-http",),
    "http": ("streamable-http",),
    "https": ("streamable-http",),
    "streamable": ("streamable-http",),
    "httpstreamable": ("streamable-http",),
    "httpstream": ("streamable-http",),
    "ssehttp": ("sse", "streamable-http"),
    "httpsse": ("sse", "streamable-http"),
    "serversentevents": ("sse", "streamable-http"),
}
_NOT_SUPPORTED = frozenset({"websocket", "websockets", "ws", "wss"})


def _alias_key(written: str) -> str:
    return re.sub(r"[\s_+\-.]", "", written.lower())


def _transport_alias(written: str, allowed: list[str]) -> str:
    """` (did you mean 'streamable-http'?)` for `http` and the like; WebSocket said to be unsupported."""
    key = _alias_key(written)
    remote = "'streamable-http'" + (" or 'sse'" if "sse" in allowed else "")
    if key in _NOT_SUPPORTED:
        return f" (WebSocket is not a supported transport: use {remote})"
    meant = next((value for value in _TRANSPORT_ALIASES.get(key, ()) if value in allowed), None)
    return f" (did you mean {meant!r}?)" if meant and meant != written else ""


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
    problems += unset_references(raw_backends)
    return list(dict.fromkeys(problems))


def _locations(exc: ValidationError) -> list[Location]:
    return [tuple(error["loc"]) for error in exc.errors()]


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
        dotted = format_location(where)
        return flags.get(dotted, "overrides") if layer == "flag" else env_name(where)

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


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


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
    except RecursionError:  # json.loads on a client file nested past the parser's stack
        raise ConfigError([f"discovery.path: {client_file}: nested too deep to read; refused"]) from None
    merged = list(config.backends) + [backend for backend in discovered if backend.name not in inline]
    data = config.model_dump()
    data["backends"] = [backend.model_dump() for backend in merged]
    try:
        return VmcpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{p} (from {client_file})" for p in _describe(exc)]) from None
