"""The one typed configuration document, with every default in one place.

Precedence, highest first: CLI flags, `VMCP_`-prefixed environment variables (nested with `__`),
the YAML/JSON config file, the defaults below. Validation happens at load: every bad field is
reported by its path (`backends[2].url: ...`) and unknown keys are errors.

This package is a leaf: it imports nothing from the rest of the package. The document is here; its
sections live in the modules beside it (`sections`, `limits`, `auth`, `telemetry`, `workflows`,
`backend_auth`), so each reads in one sitting; everything is importable from `vmcp_opt.config`.
This module passes ~400 lines because the document (`VmcpConfig`) and its loading (`load_config`: the file,
`${VAR}` resolution, problems by path) are one flow, read top to bottom. Discovered mode's client config
files are read by `backends/discovery.py`, which the `vmcp` command hands to `load_config`.

Where state lives: the optimizer's index and usage history go to `optimizer.index_dir` when it is set, else
to a directory of their own per config file under `data_dir` (default: the per-user data directory, e.g.
`~/.local/share/vmcp-opt` on Linux), so an installed package never writes beside its code and two configs
never share (and prune) one index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import platformdirs
import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vmcp_opt.config.auth import (
    JWT_ALGORITHMS,
    LOOPBACK_ADDRESSES,
    ApiKeysConfig,
    AuthConfig,
    AuthorizationConfig,
    ClaimNames,
    IncomingAuthConfig,
    OAuthConfig,
)
from vmcp_opt.config.backend_auth import (
    LITERAL_REFUSED,
    NEVER_FORWARDED,
    BackendAuthConfig,
    SecretRef,
)
from vmcp_opt.config.base import (
    _ENV_REFERENCE,
    APP_NAME,
    BACKEND_NAME_PATTERN,
    DEFAULT_CONFIG_PATH,
    PACKAGE_ROOT,
    PROJECT_ROOT,
    SECRET_NAME,
    ConfigError,
)
from vmcp_opt.config.limits import (
    BucketConfig,
    LimitsConfig,
    RateLimitsConfig,
    RedisConfig,
    RequestStateConfig,
    ToolBucketConfig,
)
from vmcp_opt.config.sections import (
    AggregationConfig,
    BackendConfig,
    BackendToolsConfig,
    CircuitBreakerConfig,
    DiscoveryConfig,
    FailureConfig,
    HealthConfig,
    OptimizerConfig,
    RestartConfig,
    ServerConfig,
    TimeoutsConfig,
    ToolOverride,
)
from vmcp_opt.config.telemetry import (
    AuditConfig,
    MetricsConfig,
    TelemetryConfig,
    TracingConfig,
)
from vmcp_opt.config.workflows import (
    RESERVED_NAMES,
    STEP_ID_PATTERN,
    WORKFLOW_NAME_PATTERN,
    OnErrorConfig,
    StepConfig,
    WorkflowConfig,
    check_workflows,
)

_file_data: ContextVar[dict[str, Any] | None] = ContextVar("vmcp_config_file_data", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The already-parsed config file, below environment variables in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


class VmcpConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VMCP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    # The MCP servers behind the gateway (each below, as `backends[]`).
    backends: list[BackendConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    failure: FailureConfig = Field(default_factory=FailureConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # Composite tools: steps across backends served as one tool (each below, as `workflows[]`).
    workflows: list[WorkflowConfig] = Field(default_factory=list)
    # Who may connect and what each caller may see and call.
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Audit log, Prometheus metrics, OpenTelemetry traces.
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    # The Redis server replicas share (used by `rate_limits.store: redis`).
    redis: RedisConfig = Field(default_factory=RedisConfig)
    # Token buckets per caller, per tool and shared, on tool calls.
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    # The key sealing 2026-07-28 `request_state`, shared by replicas.
    request_state: RequestStateConfig = Field(default_factory=RequestStateConfig)
    # Where the gateway keeps its state (indexes, usage history) unless a setting names a place; unset: the
    # per-user data directory (platformdirs: ~/.local/share/vmcp-opt on Linux, ~/Library/Application
    # Support/vmcp-opt on macOS, %LOCALAPPDATA%\vmcp-opt on Windows).
    data_dir: str | None = None
    # Directory that relative paths in the file resolve against; set by `load_config`.
    base_dir: str = "."
    # The config file this was read from (`load_config`); names the default index directory.
    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @model_validator(mode="after")
    def _cross_references(self) -> VmcpConfig:
        names = [backend.name for backend in self.backends]
        problems = _duplicate_names(names)
        known = set(names)
        unknown_priority = [name for name in self.aggregation.priority if name not in known]
        if unknown_priority and self.discovery.mode == "inline":
            problems.append(f"aggregation.priority: unknown backends {unknown_priority}")
        unknown_tools = [name for name in self.aggregation.tools if name not in known]
        if unknown_tools and self.discovery.mode == "inline":
            problems.append(f"aggregation.tools: unknown backends {unknown_tools}")
        problems += check_workflows(self.workflows)
        incoming = self.auth.incoming
        remote = self.server.transport == "streamable-http" and self.server.host not in LOOPBACK_ADDRESSES
        if remote and incoming.mode == "anonymous" and not incoming.allow_anonymous_remote:
            problems.append(
                f"auth.incoming.mode: anonymous on the non-loopback address {self.server.host!r} would let anyone "
                "who reaches the port call every tool; choose oauth or api_keys, or set "
                "auth.incoming.allow_anonymous_remote: true"
            )
        if incoming.mode == "oauth" and not incoming.oauth.resource and self.server.host in ("0.0.0.0", "::"):
            problems.append(
                "auth.incoming.oauth.resource: needed when listening on every address: the URL clients use to "
                "reach the gateway (e.g. https://mcp.example.com/mcp), which tokens must name as their audience"
            )
        if problems:
            raise ValueError("\n".join(problems))  # one line per problem (`_describe`)
        return self

    def resource_uri(self) -> str:
        """This gateway's OAuth resource URI (the audience its tokens must carry)."""
        if self.auth.incoming.oauth.resource:
            return self.auth.incoming.oauth.resource
        host = self.server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.port}{self.server.path}"

    def backend(self, name: str) -> BackendConfig:
        return next(backend for backend in self.backends if backend.name == name)

    def call_timeout(self, backend: BackendConfig) -> float:
        return backend.call_timeout or self.timeouts.call

    def connect_timeout(self, backend: BackendConfig) -> float:
        return backend.connect_timeout or self.timeouts.connect

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def data_dir_path(self) -> Path:
        if self.data_dir is not None:
            return self.resolve_path(self.data_dir)
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))

    def index_dir(self) -> Path:
        if self.optimizer.index_dir is not None:
            return self.resolve_path(self.optimizer.index_dir)
        if self._source is None:
            return self.data_dir_path() / "indexes" / "default"
        digest = hashlib.sha256(str(self._source).encode()).hexdigest()[:12]
        return self.data_dir_path() / "indexes" / f"{self._source.stem}-{digest}"


# Reads discovered mode's client config file (Claude Desktop, VS Code, Cursor) into backends.
ClientConfigReader = Callable[[Path], Sequence[BackendConfig]]


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    discover: ClientConfigReader | None = None,
) -> VmcpConfig:
    """Read, merge and validate the configuration; raise `ConfigError` listing every bad field.

    `discover` reads the client config file of discovered mode (`backends.discovery.read_client_config`,
    passed by the `vmcp` command: this module knows no client format); a discovered-mode config without it
    is an error rather than a gateway with no backends.
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
    return _with_env_references_resolved(config)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError([f"{path}: no such config file"])
    text = path.read_text(encoding="utf-8")
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


def _duplicate_names(names: list[str]) -> list[str]:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    return [f"backends: names must be unique, repeated: {', '.join(duplicates)}"] if duplicates else []


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


__all__ = [
    "APP_NAME",
    "BACKEND_NAME_PATTERN",
    "DEFAULT_CONFIG_PATH",
    "JWT_ALGORITHMS",
    "LITERAL_REFUSED",
    "LOOPBACK_ADDRESSES",
    "NEVER_FORWARDED",
    "PACKAGE_ROOT",
    "PROJECT_ROOT",
    "RESERVED_NAMES",
    "SECRET_NAME",
    "STEP_ID_PATTERN",
    "WORKFLOW_NAME_PATTERN",
    "AggregationConfig",
    "ApiKeysConfig",
    "AuditConfig",
    "AuthConfig",
    "AuthorizationConfig",
    "BackendAuthConfig",
    "BackendConfig",
    "BackendToolsConfig",
    "BucketConfig",
    "CircuitBreakerConfig",
    "ClaimNames",
    "ConfigError",
    "DiscoveryConfig",
    "FailureConfig",
    "HealthConfig",
    "IncomingAuthConfig",
    "LimitsConfig",
    "MetricsConfig",
    "OAuthConfig",
    "OnErrorConfig",
    "OptimizerConfig",
    "RateLimitsConfig",
    "RedisConfig",
    "RequestStateConfig",
    "RestartConfig",
    "SecretRef",
    "ServerConfig",
    "StepConfig",
    "TelemetryConfig",
    "TimeoutsConfig",
    "ToolBucketConfig",
    "ToolOverride",
    "TracingConfig",
    "VmcpConfig",
    "WorkflowConfig",
    "check_workflows",
    "load_config",
]
