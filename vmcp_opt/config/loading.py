"""Loading: the file, environment and flags merged into a `VmcpConfig`; every problem reported by its path,
`${VAR}` references resolved, discovered backends merged in."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vmcp_opt.config.base import (
    _ENV_REFERENCE,
    DEFAULT_CONFIG_PATH,
    SECRET_NAME,
    ConfigError,
)
from vmcp_opt.config.document import VmcpConfig, _duplicate_names, _file_data
from vmcp_opt.config.sections import (
    BackendConfig,
)

ClientConfigReader = Callable[[Path], Sequence[BackendConfig]]
# Why a model id names no usable model, or None (`optimizer.model_registry.model_problem`).
ModelCheck = Callable[[str], str | None]


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    discover: ClientConfigReader | None = None,
    check_model: ModelCheck | None = None,
) -> VmcpConfig:
    """Read, merge and validate the configuration; raise `ConfigError` listing every bad field.

    `discover` reads the client config file of discovered mode (`backends.discovery.read_client_config`,
    passed by the `vmcp` command: this module knows no client format); a discovered-mode config without it
    is an error rather than a gateway with no backends. `check_model` resolves `optimizer.model` (passed by
    the `vmcp` command as well: the registry is the optimizer's), so a misspelt model fails here, not at start.
    """
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = _read_file(config_path)
    data.setdefault("base_dir", str(config_path.resolve().parent))
    token = _file_data.set(data)
    try:
        config = VmcpConfig(**(overrides or {}))
    except ValidationError as exc:
        raw_backends = (overrides or {}).get("backends", data.get("backends"))
        raise ConfigError(_every_problem(exc, raw_backends)) from None
    finally:
        _file_data.reset(token)
    if config.discovery.mode == "discovered":
        if discover is None:
            raise ConfigError(["discovery.mode: discovered, but this command reads no client config files"])
        config = _with_discovered_backends(config, discover)
    config._source = config_path.resolve()
    problems = _model_problems(config.optimizer.model, check_model)
    try:
        config = _with_env_references_resolved(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config


def _model_problems(model: str, check_model: ModelCheck | None) -> list[str]:
    problem = check_model(model) if check_model is not None else None
    return [f"optimizer.model: {problem}"] if problem else []


def _read_file(path: Path) -> dict[str, Any]:
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
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, got {type(data).__name__}"])
    return data


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        location = _format_location(error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; unknown keys are not allowed)"
        if not location:  # the document's own cross-checks: already `path: reason`, one per line
            problems.extend(message.removeprefix("Value error, ").splitlines())
            continue
        if error["type"] == "value_error" and _RELATIVE_PROBLEM.match(message.removeprefix("Value error, ")):
            # A section's own cross-checks (workflows): `relative.path: reason` lines under its location.
            problems.extend(f"{location}.{line}" for line in message.removeprefix("Value error, ").splitlines())
            continue
        problems.append(f"{location}: {message}")
    return problems


_RELATIVE_PROBLEM = re.compile(r"^(steps|parameters|output)[\w.\[\]]*: ")


def _every_problem(exc: ValidationError, raw_backends: Any) -> list[str]:
    """The fields' errors and, in the same pass, what pydantic checks only once every field is valid (names
    used twice) and what is checked after validation (unset `${VAR}`s), read from the raw backends."""
    problems = _describe(exc)
    backends = dict(enumerate(_list(raw_backends)))
    if all(error["loc"] for error in exc.errors()):  # the model's cross-checks did not run
        names = [b.get("name") for b in backends.values() if isinstance(b, dict)]
        problems += _duplicate_names([name for name in names if isinstance(name, str)])
    for index, backend in backends.items():
        if not isinstance(backend, dict):
            continue
        where = f"backends[{index}]"
        fields = [(f"{where}.{kind}.{k}", v) for kind in ("env", "headers") for k, v in _items(backend.get(kind))]
        fields += [(f"{where}.args[{i}]", arg) for i, arg in enumerate(_list(backend.get("args")))]
        fields.append((f"{where}.url", backend.get("url")))
        for place, value in fields:
            if isinstance(value, str):
                problems += [_unset(place, name) for name in _ENV_REFERENCE.findall(value) if name not in os.environ]
    return list(dict.fromkeys(problems))


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


def _with_discovered_backends(config: VmcpConfig, discover: ClientConfigReader) -> VmcpConfig:
    assert config.discovery.path is not None
    client_file = config.resolve_path(config.discovery.path)
    try:
        discovered = discover(client_file)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"discovery.path: {exc}"]) from None
    inline = {backend.name for backend in config.backends}
    merged = list(config.backends) + [backend for backend in discovered if backend.name not in inline]
    data = config.model_dump()
    data["backends"] = [backend.model_dump() for backend in merged]
    try:
        return VmcpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{p} (from {client_file})" for p in _describe(exc)]) from None


def _with_env_references_resolved(config: VmcpConfig) -> VmcpConfig:
    """Expand `${VAR}` in backend env, headers, args and url, so secrets stay out of config files."""
    problems: list[str] = []

    def expand(value: str, where: str, referenced: set[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append(_unset(where, name))
                return ""
            referenced.add(os.environ[name])
            return os.environ[name]

        return _ENV_REFERENCE.sub(replace, value)

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


def _secrets_in_args(args: list[str], where: str) -> list[str]:
    """A secret-looking `${VAR}` in `args` would sit on the command line, readable by every local user."""
    return [
        f"{where}[{i}]: ${{{name}}} would put a secret on the backend's command line, where any local user "
        f"can read it (ps); pass it in `env` instead (env: {{{name}: '${{{name}}}'}}) for the backend to read"
        for i, arg in enumerate(args)
        for name in _ENV_REFERENCE.findall(arg)
        if SECRET_NAME.search(name)
    ]
