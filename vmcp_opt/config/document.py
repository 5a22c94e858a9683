"""The document: `VmcpConfig`, every section in one typed model, with the checks that span sections."""

from __future__ import annotations

import hashlib
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, PrivateAttr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vmcp_opt.config.auth import (
    LOOPBACK_ADDRESSES,
    AuthConfig,
)
from vmcp_opt.config.base import (
    APP_NAME,
)
from vmcp_opt.config.code_mode import CodeModeConfig
from vmcp_opt.config.limits import (
    LimitsConfig,
    RateLimitsConfig,
    RedisConfig,
    RequestStateConfig,
    SessionsConfig,
)
from vmcp_opt.config.optimizer import OptimizerConfig
from vmcp_opt.config.sections import (
    AggregationConfig,
    BackendConfig,
    DiscoveryConfig,
    FailureConfig,
    HealthConfig,
    ServerConfig,
    TimeoutsConfig,
    directory_problems,
)
from vmcp_opt.config.telemetry import (
    TelemetryConfig,
    telemetry_problems,
)
from vmcp_opt.config.workflows import (
    RESERVED_NAMES,
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
    # A tool that runs the caller's own script of tool calls (off by default).
    code_mode: CodeModeConfig = Field(default_factory=CodeModeConfig)
    # Who may connect and what each caller may see and call.
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Audit log, Prometheus metrics, OpenTelemetry traces.
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    # The Redis server replicas share (used by `rate_limits.store: redis` and `sessions.store: redis`).
    redis: RedisConfig = Field(default_factory=RedisConfig)
    # Token buckets per caller, per tool and shared, on tool calls.
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    # Where MCP sessions and their SSE events live: this process, or Redis (any replica serves any session).
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
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
        problems += _code_mode_problems(self)
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
        problems += _unexchangeable(self)
        if self.optimizer.model_cache is not None:
            problems += directory_problems("optimizer.model_cache", self.resolve_path(self.optimizer.model_cache))
        server = self.server
        problems += telemetry_problems(
            self.telemetry, transport=server.transport, host=server.host, port=server.port, base_dir=self.base_dir
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

    def own_tool_names(self) -> set[str]:
        """The tools the gateway serves itself, whatever the backends serve: the workflows, the meta-tools with
        the optimizer on, the script tool with code mode on."""
        names = {workflow.name for workflow in self.workflows}
        if self.optimizer.enabled:
            names |= RESERVED_NAMES
        if self.code_mode.enabled:
            names.add(self.code_mode.tool_name)
        return names

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

    def model_cache_dir(self) -> Path:
        if self.optimizer.model_cache is not None:
            return self.resolve_path(self.optimizer.model_cache)
        return self.data_dir_path() / "models"

    @property
    def source(self) -> Path | None:
        """The config file this was loaded from; None for a config made in code or from the environment alone."""
        return self._source

    def index_dir(self) -> Path:
        if self.optimizer.index_dir is not None:
            return self.resolve_path(self.optimizer.index_dir)
        if self._source is None:
            return self.data_dir_path() / "indexes" / "default"
        digest = hashlib.sha256(str(self._source).encode()).hexdigest()[:12]
        return self.data_dir_path() / "indexes" / f"{self._source.stem}-{digest}"


def _code_mode_problems(config: VmcpConfig) -> list[str]:
    """Code mode runs where its bounds hold, and the script tool's name is no meta-tool's nor a workflow's (it
    would hide one)."""
    name = config.code_mode.tool_name
    if not config.code_mode.enabled:
        return []
    if not sys.platform.startswith("linux"):
        return ["code_mode.enabled: needs Linux, whose kernel bounds a script's CPU and memory (RLIMIT_CPU, RLIMIT_AS)"]
    if name in RESERVED_NAMES:
        return [f"code_mode.tool_name: '{name}' is a meta-tool's name; choose another"]
    if any(workflow.name == name for workflow in config.workflows):
        return [f"code_mode.tool_name: '{name}' is also a workflow's name; rename one of them"]
    return []


def script_tool_warnings(config: VmcpConfig) -> list[str]:
    """A backend tool the script tool's name would hide (the script tool is served first): one an override names
    so, or, under `prefix`, one a backend would serve under that name. The backends' own tools are known only once
    they connect: at run time the optimizer warns of any (`OptimizerFront._reachable`)."""
    name = config.code_mode.tool_name
    if not config.code_mode.enabled:
        return []
    aggregation = config.aggregation
    way_out = "choose another code_mode.tool_name, or serve the tool under another name in "
    warnings = [
        f"code_mode.tool_name: '{name}' is the name aggregation.tools.{backend}.overrides.{tool}.name serves that "
        f"tool under, which the script tool hides (find_tool leaves it out, calls run the script tool); {way_out}"
        f"aggregation.tools.{backend}.overrides"
        for backend, tools in aggregation.tools.items()
        for tool, override in tools.overrides.items()
        if override.name == name
    ]
    if aggregation.conflict_resolution != "prefix":
        return warnings
    for backend in config.backends:
        before, _, after = aggregation.prefix_format.format(backend=backend.name, name="\0").partition("\0")
        tool = name[len(before) : len(name) - len(after)]
        override = aggregation.tools[backend.name].overrides.get(tool) if backend.name in aggregation.tools else None
        renamed = override is not None and override.name is not None  # served under the override's name instead
        if tool and name.startswith(before) and name.endswith(after) and not renamed:
            warnings.append(
                f"code_mode.tool_name: '{name}' is the name backend '{backend.name}' serves a tool '{tool}' under "
                "(aggregation.prefix_format): if it has one, the script tool hides it (find_tool leaves it out, "
                f"calls run the script tool); {way_out}aggregation.tools.{backend.name}.overrides"
            )
    return warnings


# Reads discovered mode's client config file (Claude Desktop, VS Code, Cursor) into backends.


def _unexchangeable(config: VmcpConfig) -> list[str]:
    """token_exchange backends behind an anonymous HTTP gateway: no caller ever presents a token to exchange, so
    every call of their tools would fail (their listing still works, on the gateway's own token, which hides it
    until the first call). Over stdio the caller is the local user, tokenless too, but the file may be served
    over HTTP as well: `vmcp validate` warns of that (`cli_validate.exchange_warnings`), as of API keys."""
    if config.server.transport != "streamable-http" or config.auth.incoming.mode != "anonymous":
        return []
    return [
        f"backends[{index}].auth.type: token_exchange exchanges each caller's OAuth access token, but "
        "auth.incoming.mode is anonymous: callers present no token, so every call of this backend's tools would "
        "fail; set auth.incoming.mode: oauth, or give the backend another auth.type"
        for index, backend in enumerate(config.backends)
        if backend.auth.type == "token_exchange"
    ]


def _duplicate_names(names: list[str]) -> list[str]:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    return [f"backends: names must be unique, repeated: {', '.join(duplicates)}"] if duplicates else []
