"""The serving sections: server, backends, discovery, aggregation, timeouts, health, failure (the optimizer's
in config/optimizer.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, IPvAnyNetwork, PrivateAttr, ValidationInfo, field_validator, model_validator

from vmcp_opt.config.backend_auth import BackendAuthConfig
from vmcp_opt.config.base import BACKEND_NAME_PATTERN, TOOL_NAME_RULE, _Strict, mask_url

# An Origin as a browser sends it (scheme, host, optional port), or with `:*` for any port.
_CORS_ORIGIN = re.compile(r"(?i)https?://(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{1,5}|:\*)?")

# The sources of the gateway's own tools (find_tool/call_tool: `vmcp`; composite tools: `workflows`). A backend
# by either name would share that source: its tools would be `Backend::"vmcp"` or `Backend::"workflows"` to a
# Cedar policy, and mixed with the gateway's own in telemetry and the audit log.
RESERVED_BACKEND_NAMES = frozenset({"vmcp", "workflows"})
_RESERVED_FOR = {"vmcp": "tools (find_tool, call_tool)", "workflows": "composite tools (`workflows`)"}


class ServerConfig(_Strict):
    # Listen address (`vmcp serve --host`); loopback unless set.
    host: str = "127.0.0.1"
    # Listen port (`--port`); 0 picks a free one.
    port: int = Field(8000, ge=0, le=65535)
    # This process's name among replicas, sent on every HTTP answer as `Vmcp-Replica`; unset: hostname:pid.
    replica_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    # How clients reach the gateway: streamable HTTP, or stdin/stdout (`--stdio`, for desktop clients).
    transport: Literal["streamable-http", "stdio"] = "streamable-http"
    # Seconds a request made during start-up (tools/list, find_tool, a call, a log level) waits for the backends'
    # first listing; after it the gateway serves the backends that are ready and adds the rest as they connect.
    startup_wait: float = Field(5.0, ge=0)
    # URL path of the MCP endpoint.
    path: str = "/mcp"
    # Largest HTTP request body accepted, and the longest line a `--stdio` client may send; larger is refused.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Extra Host header values accepted besides loopback and `host` (DNS-rebinding protection): a name or address
    # (any port) or a `name:port` pattern; `--allow-host` adds to it.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Extra browser Origin values accepted besides loopback.
    allowed_origins: list[str] = Field(default_factory=list)
    # Web app origins (`https://app.example.com`, `http://localhost:5173`, `https://app.example.com:*`) whose pages
    # may call the gateway from a browser (CORS: preflights answered, `Access-Control-*` headers); each is also
    # accepted by the Origin check, as `allowed_origins` are. Empty: no CORS headers.
    cors_origins: list[str] = Field(default_factory=list)
    # Reverse proxies (addresses or networks: `127.0.0.1`, `10.0.0.0/8`) whose `X-Forwarded-For` names the
    # client: the rightmost address in it that is not one of them is the client's, for the per-address session
    # quota, the audit `source` and the logs. Empty: the header is ignored, and every client behind a proxy
    # counts as the proxy's address (as every local client counts as loopback). The proxy must append the
    # address it saw (nginx: `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    # Least severity logged (`--log-level`); libraries' own chatter stays at warning.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: rich on a terminal, plain lines elsewhere; plain: `time level logger: message`; json: one object
    # per line (vmcp_opt/logs.py).
    log_format: Literal["auto", "plain", "json"] = "auto"
    # Per-call log lines (`tool call <tool> by <caller>: ok|error in <ms>`) at most this many a second, in bursts of
    # five seconds' worth: past it the next line says how many were not logged, so a client calling as fast as it
    # can does not make the gateway write as many lines. 0: none (the audit log, `telemetry.audit`, keeps every call).
    call_log_rate: float = Field(20.0, ge=0, le=1_000_000)
    # Calls of 2026-07-28 clients that may ask the client for input (`InputRequiredResult`) at once, each
    # holding a backend session of its own; past it such a call is refused with an error.
    max_pending_calls: int = Field(64, ge=1)
    # Keep one spare backend session per (backend, capability set) seen in such calls, opened ahead, so
    # the next such call does not wait for a backend process to start.
    round_trip_spares: bool = True
    # On SIGTERM (HTTP): seconds in-flight requests get to finish while `/readyz` fails and new sessions are
    # refused, before the server stops. A pod's terminationGracePeriodSeconds must exceed this plus
    # `timeouts.shutdown` and any preStop delay. 0: stop at once.
    drain_timeout: float = Field(25.0, ge=0, le=3600)
    # Seconds an HTTP client may leave an answer unread: when the gateway holds bytes of an answer the client's
    # side has no room for and the client reads none of them for this long, its connection is reset and the
    # bytes dropped (a client reading slowly, but something every this many seconds, keeps its connection).
    write_timeout: float = Field(30.0, gt=0, le=3600)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # Lower case, as browsers send an Origin and as the SDK's own Origin check compares it (exactly).
        bad = [origin for origin in value if not _CORS_ORIGIN.fullmatch(origin)]
        if bad:
            raise ValueError(
                f"not an origin: {', '.join(repr(o) for o in bad)}; write scheme://host, scheme://host:port or "
                "scheme://host:* (any port), without a path; '*' is not accepted: name each web app"
            )
        return [origin.lower() for origin in value]


class BackendConfig(_Strict):
    # Unique, and not `vmcp` or `workflows` (the gateway's own tools); prefixes the backend's tool and prompt
    # names (`aggregation.prefix_format`).
    name: str = Field(pattern=BACKEND_NAME_PATTERN)
    # stdio: a process the gateway starts; streamable-http or sse: a server at `url`.
    transport: Literal["stdio", "streamable-http", "sse"] = "stdio"
    # What the backend is for; indexed with its tools, so find_tool matches it too.
    description: str = ""
    # stdio: the program to run (`python` is the gateway's own interpreter; `~` expands).
    command: str | None = None
    # stdio: the program's arguments (`${VAR}`s expand; secret-looking ones are refused: use `env`). A `~` is
    # passed as written, as a shell passes a quoted one: write the path out, or make it relative to `cwd`.
    args: list[str] = Field(default_factory=list)
    # stdio: environment variables added for the program (`${VAR}`s expand).
    env: dict[str, str] = Field(default_factory=dict)
    # stdio: working directory, relative to the config file's directory (`~` expands).
    cwd: str | None = None
    # streamable-http and sse: the server's URL (`${VAR}`s expand).
    url: str | None = Field(None, validate_default=True)
    # streamable-http and sse: headers sent with every request, e.g. Authorization (`${VAR}`s expand). A
    # non-empty one is an error on a stdio backend, as `args`, `env` or `cwd` is on the others: none would be used.
    headers: dict[str, str] = Field(default_factory=dict)
    # Seconds to connect to this backend, instead of `timeouts.connect`.
    connect_timeout: float | None = Field(None, gt=0)
    # Seconds one call to this backend may take, instead of `timeouts.call`.
    call_timeout: float | None = Field(None, gt=0)
    # How the gateway authenticates to this backend (config/backend_auth.py); secrets only from env or files.
    auth: BackendAuthConfig = Field(default_factory=BackendAuthConfig)
    # Whether the backend may ask a client for its roots (`roots/list`). relay: a client that declared roots is
    # asked, on its own session, and its answer reaches the backend; none: the backend's sessions declare no
    # roots and its `roots/list` is refused. A client's roots name folders on the client's machine; a stdio
    # backend runs on the gateway's host, where a server such as server-filesystem would take them as the folders
    # it may read in place of its `args`. Unset: none for stdio, relay for streamable-http and sse.
    roots: Literal["relay", "none"] | None = None
    # Values expanded from `${VAR}` references: secrets by assumption, masked wherever they could show.
    _referenced: set[str] = PrivateAttr(default_factory=set)

    # `args` as the file wrote them, before their `${VAR}`s expanded: what `vmcp validate` quotes (an expanded
    # value is a secret by assumption).
    _written_args: list[str] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        self._written_args = list(self.args)

    def referenced_values(self) -> set[str]:
        return set(self._referenced)

    def relays_roots(self) -> bool:
        """`roots`, or its default for the transport: only a remote backend is asked about the client's roots."""
        if self.roots is not None:
            return self.roots == "relay"
        return self.transport != "stdio"

    def written_arg(self, index: int) -> str:
        """`args[index]` as the file wrote it (`${DB_PASSWORD}`, not its value)."""
        return self._written_args[index] if index < len(self._written_args) else self.args[index]

    @field_validator("name", mode="before")
    @classmethod
    def _name_in_words(cls, value: Any) -> Any:
        # Before the pattern's own check, whose message is the bare regex: a text that does not match it is
        # refused in words. Other types are left to the `str` check.
        if isinstance(value, str) and not re.fullmatch(BACKEND_NAME_PATTERN, value):
            raise ValueError(
                f"{value!r} is not a backend name: one is 1 to 48 ASCII letters, digits, '_' or '-', starting "
                "with a letter or digit (by default it prefixes its tools' and prompts' names)"
            )
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_BACKEND_NAMES:
            raise ValueError(
                f"{value!r} is reserved: it is the source of the gateway's own {_RESERVED_FOR[value]}, so "
                f'a policy on Backend::"{value}" would cover both; choose another name'
            )
        return value

    # Each transport's fields are checked one by one, so a backend's every misplaced field is reported in one
    # pass (a model check runs only once every field is valid, and stops at its first problem). `transport` is
    # declared first: it is in `info.data` unless it was itself refused, and then nothing is judged by it.

    @field_validator("command")
    @classmethod
    def _command_for_stdio(cls, value: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport")
        if value and transport in _REMOTE:
            raise ValueError(f"`command` is for stdio backends, not {transport}")
        return value

    @field_validator("args", "env", "cwd")
    @classmethod
    def _process_field(cls, value: Any, info: ValidationInfo) -> Any:
        transport = info.data.get("transport")
        if value and transport in _REMOTE:
            raise ValueError(_process_field_problem(str(info.field_name), transport))
        return value

    @field_validator("url")
    @classmethod
    def _url_for_remote(cls, value: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport")
        if transport == "stdio":
            if value and "command" in info.data:  # `command` itself refused: nothing to say of `url` by it
                raise ValueError(_stdio_url_problem(info.data["command"]))
        elif transport in _REMOTE:
            if not value:
                raise ValueError(f"a {transport} backend needs `url`")
            if not re.match(r"^https?://", value):
                # Masked: a URL may carry a password or a token, and this error is printed and logged.
                raise ValueError(f"must start with http:// or https://, got {mask_url(value)!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers_for_remote(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # Only beside a `command`: without one, `transport` was probably forgotten, which `url` or `command` says.
        if value and info.data.get("transport") == "stdio" and info.data.get("command"):
            raise ValueError(
                "a stdio backend is a process, not an HTTP server: it is sent no headers, so these would be "
                'dropped; pass a credential to it through `env` (`env: {API_KEY: "${API_KEY}"}`) and remove `headers`'
            )
        return value

    @model_validator(mode="after")
    def _stdio_command(self) -> BackendConfig:
        # `field: reason`: reported under the backend's path, ending at the field (config/loading.py). Here, not
        # at `command`, whose check cannot see whether a `url` follows (then `url` says what is missing).
        if self.transport == "stdio" and not self.command and not self.url:
            raise ValueError("command: a stdio backend needs `command`")
        return self


_REMOTE = frozenset({"streamable-http", "sse"})


def _process_field_problem(field: str, transport: str) -> str:
    """Why `args`, `env` or `cwd` on a backend at a URL would be dropped, and what to write instead."""
    instead = {
        "args": "put what the server takes in its `url`, and remove `args`",
        "env": "send a credential in `headers` (or with `auth`), and remove `env`",
        "cwd": "remove `cwd`",
    }[field]
    return (
        f"a {transport} backend is a server at a URL, not a process the gateway starts: `{field}` means nothing "
        f"to it and would be dropped; {instead}"
    )


def _stdio_url_problem(command: str | None) -> str:
    if not command:  # `transport` left at its default beside a URL
        return "a backend with `url` needs `transport: streamable-http` (or sse); stdio is the default"
    return "`url` is for streamable-http and sse backends, not stdio"


class DiscoveryConfig(_Strict):
    # inline: the backends of this file; discovered: those of a desktop client's config file (`path`) too:
    # Claude Desktop's, a VS Code / Cursor mcp.json or VS Code's settings.json, comments and trailing commas allowed.
    mode: Literal["inline", "discovered"] = "inline"
    # A Claude Desktop (`mcpServers`) or VS Code / Cursor (`servers`) client config file.
    path: str | None = None

    @model_validator(mode="after")
    def _path_for_discovered(self) -> DiscoveryConfig:
        if self.mode == "discovered" and not self.path:
            raise ValueError("discovered mode needs `path` (a claude_desktop_config.json or mcp.json)")
        return self


class AnnotationsOverride(_Strict):
    """By the MCP names, as clients see them: each one set here replaces the backend's, the others are kept. For a
    backend that declares nothing, or wrongly: a policy on `resource.read_only` judged its tools by MCP's
    defaults alone (not read-only, destructive, open world), and could not be told otherwise."""

    # A human-readable name for the tool.
    title: str | None = None
    # The tool changes nothing. Also what a Cedar policy reads as the tool's `read_only`.
    readOnlyHint: bool | None = None
    # A tool that changes things may destroy them (Cedar: `destructive`).
    destructiveHint: bool | None = None
    # Calling it again with the same arguments changes nothing more (Cedar: `idempotent`).
    idempotentHint: bool | None = None
    # It reaches beyond the backend (the web, other systems) (Cedar: `open_world`).
    openWorldHint: bool | None = None


class ToolOverride(_Strict):
    # The name the tool is served under (kept as is, never prefixed).
    name: str | None = None
    # The description served instead of the backend's.
    description: str | None = None
    # MCP annotations, each one set replacing the backend's: what clients list and Cedar policies judge the tool by.
    annotations: AnnotationsOverride = Field(default_factory=AnnotationsOverride)

    @field_validator("name")
    @classmethod
    def _servable(cls, value: str | None) -> str | None:
        # Checked here, not only when the catalogue is built: an empty name was ignored without a word, and
        # one no client may call passed `vmcp validate` only to be dropped at run time.
        if value is not None and not TOOL_NAME_RULE.fullmatch(value):
            raise ValueError("a tool name is 1 to 128 characters from A-Z a-z 0-9 _ - .")
        return value


class BackendToolsConfig(_Strict):
    # Glob patterns of the backend's tool names to serve.
    include: list[str] = Field(default_factory=lambda: ["*"])
    # Glob patterns of tool names left out, even when included.
    exclude: list[str] = Field(default_factory=list)
    # Glob patterns of tool names served to workflows' steps alone, included or not (`exclude` still drops them):
    # not in tools/list nor find_tool, and a client calling one, directly or through call_tool, is told what an
    # unknown name is told. Only a step naming the tool as written (its `tool`, or a literal `tool_name` of a
    # `call_tool` step) reaches it; a templated name reaches served tools alone. Policies apply to each step's call.
    workflow_only: list[str] = Field(default_factory=list)
    # Per tool, keyed by the backend's own tool name: the name, description and annotations to serve it with.
    overrides: dict[str, ToolOverride] = Field(default_factory=dict)


class AggregationConfig(_Strict):
    # prefix: every tool and prompt named `prefix_format`; priority: names kept, the backend first in
    # `priority` wins a clash; manual: names kept, a clash keeps the first backend's tool unless an
    # override renames one.
    conflict_resolution: Literal["prefix", "priority", "manual"] = "prefix"
    # How prefixed names are made, from {backend} and {name}.
    prefix_format: str = "{backend}_{name}"
    # Backend names, most preferred first (the priority strategy).
    priority: list[str] = Field(default_factory=list)
    # Per backend (by name): which tools to serve and how to rename or re-describe them.
    tools: dict[str, BackendToolsConfig] = Field(default_factory=dict)

    @field_validator("prefix_format")
    @classmethod
    def _prefix_has_name(cls, value: str) -> str:
        if "{name}" not in value:
            raise ValueError("must contain {name}")
        try:
            value.format(backend="b", name="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{backend}} and {{name}} may appear: {exc}") from exc
        made = value.format(backend="backend", name="tool")
        if not TOOL_NAME_RULE.fullmatch(made):  # every prefixed tool would be dropped at run time
            raise ValueError(f"makes names like {made!r}, which no client may call (A-Z a-z 0-9 _ - . only)")
        return value


class TimeoutsConfig(_Strict):
    # Seconds to connect to a backend and list what it serves.
    connect: float = Field(30.0, gt=0)
    # Seconds one call to a backend may take.
    call: float = Field(60.0, gt=0)
    # Seconds open requests and streams get to finish when the gateway stops (after `server.drain_timeout`).
    shutdown: float = Field(5.0, gt=0)
    # How long a client may take to answer a backend's sampling/elicitation/roots request (a person may be
    # answering), or to retry a 2026-07-28 call that asked for input; not counted against `call`.
    input: float = Field(300.0, gt=0)


class HealthConfig(_Strict):
    """Periodic MCP pings per backend (vmcp_opt/health/checker.py)."""

    # Ping every backend periodically.
    enabled: bool = True
    # Seconds between pings.
    interval: float = Field(10.0, gt=0)
    # Seconds one ping may take.
    timeout: float = Field(5.0, gt=0)
    # Consecutive failed pings before a backend is unhealthy (it then leaves the catalogue and is
    # reconnected).
    unhealthy_threshold: int = Field(3, ge=1)
    # Consecutive good pings before a recovering backend is healthy again.
    healthy_threshold: int = Field(2, ge=1)
    # A ping slower than this marks the backend degraded (still served).
    degraded_latency: float = Field(1.0, gt=0)


class CircuitBreakerConfig(_Strict):
    """Per-backend circuit breaker, fed by health checks and by real calls (vmcp_opt/health/breaker.py)."""

    # Fail calls to a failing backend at once instead of waiting on it.
    enabled: bool = True
    # Open after this many consecutive failures...
    failure_threshold: int = Field(5, ge=1)
    # ...or when at least `minimum_calls` outcomes in the last `window` seconds fail at this rate.
    failure_rate: float = Field(0.5, gt=0, le=1)
    # Seconds of outcomes the failure rate is computed over.
    window: float = Field(30.0, gt=0)
    # Outcomes in the window needed before the failure rate counts.
    minimum_calls: int = Field(10, ge=1)
    # A call slower than this counts as a failure even when it succeeds, unless another call to the backend
    # succeeded while it ran (as for a call past its deadline: its arguments, not the backend, made it slow).
    slow_call: float = Field(30.0, gt=0)
    # Seconds an open circuit fails calls at once before letting trial calls through (half-open).
    cooldown: float = Field(10.0, gt=0)
    # Trial calls admitted while half-open; this many successes close the circuit, one failure reopens it.
    trial_calls: int = Field(3, ge=1)


class RestartConfig(_Strict):
    """Reconnecting a lost backend (a stdio process is started again): exponential backoff with jitter."""

    # Reconnect (restart) a lost backend; off, it stays down.
    enabled: bool = True
    # Seconds before the first attempt.
    initial_delay: float = Field(0.5, gt=0)
    # Longest wait between two attempts.
    max_delay: float = Field(30.0, gt=0)
    # Each wait is the previous one times this.
    multiplier: float = Field(2.0, ge=1)
    # Each delay is scaled by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = Field(0.2, ge=0, le=1)


class FailureConfig(_Strict):
    # fail: start-up fails, naming the backends that could not connect; best_effort: serve what is healthy.
    mode: Literal["fail", "best_effort"] = "best_effort"
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    restart: RestartConfig = Field(default_factory=RestartConfig)


def directory_problems(setting: str, path: Path) -> list[str]:
    """Why `path` cannot be the directory `setting` names (it, or a parent, is a file), or nothing; whether it
    is writable is left to the start, where permissions may differ from `vmcp validate`'s."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return []
            where = "is a file" if candidate == path else f"is under the file {candidate}"
            return [f"{setting}: {path} {where}, not a directory; name a directory"]
    return []
