"""The one typed configuration document, with every default in one place.

Precedence, highest first: CLI flags, `VMCP_`-prefixed environment variables (nested with `__`),
the YAML/JSON config file, the defaults below. Validation happens at load: every bad field is
reported by its path (`backends[2].url: ...`) and unknown keys are errors.

This module is a leaf: it imports nothing from the rest of the package. Discovered mode's client config
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
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vmcp_opt.config_workflows import WorkflowConfig, check_workflows

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
# The bundled demo: a wheel carries examples/ inside the package (pyproject.toml's force-include); a source
# checkout has it beside the package.
_PACKAGED_DEMO = PACKAGE_ROOT / "examples" / "demo.yaml"
DEFAULT_CONFIG_PATH = _PACKAGED_DEMO if _PACKAGED_DEMO.exists() else PROJECT_ROOT / "examples" / "demo.yaml"
APP_NAME = "vmcp-opt"

BACKEND_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Names (env keys, `${VAR}` references, URL query parameters) whose values are secrets whatever they look like.
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|COOKIE|SESSION|(^|_)(KEY|PAT|PWD)$",
    re.I,
)


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists `path: reason` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(_Strict):
    # Listen address (`vmcp serve --host`); loopback unless set.
    host: str = "127.0.0.1"
    # Listen port (`--port`); 0 picks a free one.
    port: int = Field(8000, ge=0, le=65535)
    # How clients reach the gateway: streamable HTTP, or stdin/stdout (`--stdio`, for desktop clients).
    transport: Literal["streamable-http", "stdio"] = "streamable-http"
    # Seconds a request made during start-up (tools/list, find_tool, a call) waits for the backends' first
    # listing; after it the gateway serves the backends that are ready and adds the rest as they connect.
    startup_wait: float = Field(5.0, ge=0)
    # URL path of the MCP endpoint.
    path: str = "/mcp"
    # Largest HTTP request body accepted; a larger one is refused.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Extra Host header values accepted besides loopback and `host` (DNS-rebinding protection): a name or address
    # (any port) or a `name:port` pattern; `--allow-host` adds to it.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Extra browser Origin values accepted besides loopback.
    allowed_origins: list[str] = Field(default_factory=list)
    # Least severity logged (`--log-level`); libraries' own chatter stays at warning.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: rich on a terminal, plain lines elsewhere; plain: `time level logger: message`; json: one object
    # per line (vmcp_opt/logs.py).
    log_format: Literal["auto", "plain", "json"] = "auto"
    # Calls of 2026-07-28 clients that may ask the client for input (`InputRequiredResult`) at once, each
    # holding a backend session of its own; past it such a call is refused with an error.
    max_pending_calls: int = Field(64, ge=1)
    # Keep one spare backend session per (backend, capability set) seen in such calls, opened ahead, so
    # the next such call does not wait for a backend process to start.
    round_trip_spares: bool = True


class BackendConfig(_Strict):
    # Unique; prefixes the backend's tool and prompt names (`aggregation.prefix_format`).
    name: str = Field(pattern=BACKEND_NAME_PATTERN)
    # stdio: a process the gateway starts; streamable-http or sse: a server at `url`.
    transport: Literal["stdio", "streamable-http", "sse"] = "stdio"
    # What the backend is for; indexed with its tools, so find_tool matches it too.
    description: str = ""
    # stdio: the program to run (`python` is the gateway's own interpreter).
    command: str | None = None
    # stdio: the program's arguments (`${VAR}`s expand; secret-looking ones are refused: use `env`).
    args: list[str] = Field(default_factory=list)
    # stdio: environment variables added for the program (`${VAR}`s expand).
    env: dict[str, str] = Field(default_factory=dict)
    # stdio: working directory, relative to the config file's directory.
    cwd: str | None = None
    # streamable-http and sse: the server's URL (`${VAR}`s expand).
    url: str | None = None
    # streamable-http and sse: headers sent with every request, e.g. Authorization (`${VAR}`s expand).
    headers: dict[str, str] = Field(default_factory=dict)
    # Seconds to connect to this backend, instead of `timeouts.connect`.
    connect_timeout: float | None = Field(None, gt=0)
    # Seconds one call to this backend may take, instead of `timeouts.call`.
    call_timeout: float | None = Field(None, gt=0)
    # Values expanded from `${VAR}` references: secrets by assumption, masked wherever they could show.
    _referenced: set[str] = PrivateAttr(default_factory=set)

    def referenced_values(self) -> set[str]:
        return set(self._referenced)

    @model_validator(mode="after")
    def _transport_fields(self) -> BackendConfig:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio backend needs `command`")
            if self.url:
                raise ValueError("`url` is for streamable-http and sse backends, not stdio")
        else:
            if not self.url:
                raise ValueError(f"a {self.transport} backend needs `url`")
            if not re.match(r"^https?://", self.url):
                raise ValueError(f"`url` must start with http:// or https://, got {self.url!r}")
            if self.command:
                raise ValueError(f"`command` is for stdio backends, not {self.transport}")
        return self


class DiscoveryConfig(_Strict):
    # inline: the backends of this file; discovered: those of a desktop client's config file (`path`) too.
    mode: Literal["inline", "discovered"] = "inline"
    # A Claude Desktop (`mcpServers`) or VS Code / Cursor (`servers`) client config file.
    path: str | None = None

    @model_validator(mode="after")
    def _path_for_discovered(self) -> DiscoveryConfig:
        if self.mode == "discovered" and not self.path:
            raise ValueError("discovered mode needs `path` (a claude_desktop_config.json or mcp.json)")
        return self


class ToolOverride(_Strict):
    # The name the tool is served under (kept as is, never prefixed).
    name: str | None = None
    # The description served instead of the backend's.
    description: str | None = None


class BackendToolsConfig(_Strict):
    # Glob patterns of the backend's tool names to serve.
    include: list[str] = Field(default_factory=lambda: ["*"])
    # Glob patterns of tool names left out, even when included.
    exclude: list[str] = Field(default_factory=list)
    # Per tool, keyed by the backend's own tool name: the name and description to serve it under.
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
        return value


class OptimizerConfig(_Strict):
    # find_tool and call_tool in tools/list instead of every backend tool (`vmcp serve --no-optimizer`,
    # VMCP_OPTIMIZER__ENABLED=false or `enabled: false` lists every tool instead).
    enabled: bool = True
    # A registry id from models/registry.yaml or a local sentence-transformers directory.
    model: str = "all-MiniLM-L6-v2"
    # Persisted index and usage history; relative paths resolve against the config file's directory.
    # Unset: `<data_dir>/indexes/<config file name>-<hash of its absolute path>`, one per config.
    index_dir: str | None = None
    # Tools always listed next to the meta-tools (routable names).
    pinned: list[str] = Field(default_factory=list)
    # Results find_tool returns when the request gives no `limit`.
    default_limit: int = Field(8, ge=1, le=50)
    # Exact inner product by default; "hnsw" for very large catalogues.
    index_type: Literal["flat", "hnsw"] = "flat"
    # bfloat16 bulk encoding where the CPU supports it (~3x faster, same quality).
    bulk_bfloat16: bool = True
    # Tools embedded per batch when indexing.
    batch_size: int = Field(64, ge=1)
    # Ranking: how the keyword and vector arms are fused. Defaults chosen by `vmcp eval` (eval/README.md).
    fusion: Literal["weighted", "rrf"] = "weighted"
    # Weighted fusion: the vector arm's share of the score (the keyword arm has the rest).
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    # Reciprocal-rank fusion's k: larger values flatten the head of each arm's ranking.
    rrf_k: int = Field(60, ge=1)
    # Split multi-intent requests into sub-queries and merge their rankings.
    split_intents: bool = True
    # Arm depth: candidates taken from each arm before fusion.
    candidates: int = Field(100, ge=1)
    # Tools used together (optimizer/usage.py): learned from the calls clients make through the gateway
    # (names and counts only), they raise each other in find_tool. On the ToolLens dev split, 13.9k past
    # tasks took nDCG@10 from 39.4 to 54.4 and COMP@5 from 10.9 to 29.4 (eval/README.md); with no history
    # the ranking is unchanged. Kept in `index_dir/usage.json`.
    usage: bool = True
    # How much the companions of the best results are raised; 0 turns it off in ranking.
    usage_weight: float = Field(1.0, ge=0.0)
    # The results whose companions and prerequisites are raised (the k-th result's weight is divided by k).
    usage_seeds: int = Field(8, ge=1, le=50)
    # Calls from one client this many seconds apart or less belong to one task.
    usage_window: float = Field(300.0, gt=0)
    # A tool issuing a value a result requires (GetUserToken for a `token`, list_channels for a `channel_id`;
    # optimizer/prerequisites.py) is raised as a companion with P = 1, times this; 0 turns it off.
    prerequisite_weight: float = Field(1.0, ge=0.0)
    # find_tool marks a result whose match score (0..1, optimizer/calibration.py) is below this as a weak match,
    # and says nothing fits when all are; unset: the threshold learned on the dev split for the model.
    match_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # Vectors of tools that left the catalogue, kept (in memory and in the persisted index, newest first) so
    # a backend that restarts or recovers is not embedded again: ~1.5 KB each.
    keep_removed: int = Field(10_000, ge=0)
    # Most sub-queries one multi-intent request is split into (each costs one query embedding).
    max_intents: int = Field(4, ge=1, le=16)
    # BM25 term saturation of the keyword arm (Lucene's default, like bm25_b's; lower values won on the
    # ToolLens dev split but lost on three held-out sets, see eval/README.md).
    bm25_k1: float = Field(1.5, gt=0)
    # BM25 length normalisation of the keyword arm (Lucene's default).
    bm25_b: float = Field(0.75, ge=0, le=1)
    # Recent query embeddings kept per index (find_tool queries repeat; an embedding is most of a search).
    query_cache_size: int = Field(1024, ge=0)
    # torch threads for one query embedding: 1 holds up when cores are contended (2 threads measured
    # 7x slower at p50 on a busy 2-core host), 2 saves ~2 ms on an idle one.
    query_threads: int = Field(1, ge=1, le=64)
    # torch threads for bulk embedding (index builds); 0 = every core.
    bulk_threads: int = Field(0, ge=0, le=256)

    @model_validator(mode="before")
    @classmethod
    def _rerank_removed(cls, data: Any) -> Any:
        # `rerank` and `rerank_weight` turned on late-interaction re-ranking, which lost on held-out data and
        # left the gateway for eval/late_interaction.py. A file that sets them to what the gateway does loads.
        if not isinstance(data, dict) or not {"rerank", "rerank_weight"} & data.keys():
            return data
        data = dict(data)
        rerank = data.pop("rerank", "none")
        data.pop("rerank_weight", None)
        if rerank != "none":
            raise ValueError(
                f"rerank: {rerank!r} is no longer available: late-interaction re-ranking lost on held-out data "
                "and left the gateway (eval/README.md; `vmcp eval run --methods optimizer-late-interaction` "
                "still measures it). Remove `rerank` and `rerank_weight`."
            )
        return data


class TimeoutsConfig(_Strict):
    # Seconds to connect to a backend and list what it serves.
    connect: float = Field(30.0, gt=0)
    # Seconds one call to a backend may take.
    call: float = Field(60.0, gt=0)
    # Seconds open requests get to finish when the gateway stops.
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
    # A call slower than this counts as a failure even when it succeeds.
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


class LimitsConfig(_Strict):
    """Bounds on what one backend can make the gateway do (issue 22)."""

    max_result_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest backend result passed on, counted as the characters of its text, data and "
        "structured content (about its JSON size); a larger one becomes an error naming the backend and the cap.",
    )
    list_changed_interval: float = Field(
        1.0,
        ge=0,
        description="Least seconds between two re-fetches of a backend's lists: a burst of list_changed "
        "notifications costs one re-fetch, and a flood one every this many seconds.",
    )
    argument_check_timeout: float = Field(
        1.0,
        gt=0,
        description="Deadline of one check of a call's arguments against the tool's schema; past it the call "
        "is refused, not sent.",
    )
    schema_cache_size: int = Field(
        1024, ge=1, description="Compiled tool schemas kept for argument checks (least recently used first out)."
    )
    max_dedicated_sessions: int = Field(
        64,
        ge=1,
        description="Backend sessions opened for single callers (clients with sampling, elicitation or roots, "
        "log levels, subscriptions), in total; each is a process for a stdio backend. Past it a call goes on the "
        "shared session and a subscription is refused.",
    )
    max_dedicated_sessions_per_caller: int = Field(
        8, ge=1, description="Dedicated backend sessions one caller may hold at once (one per backend it uses)."
    )
    dedicated_idle_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a dedicated backend session may go unused (no call, no subscription) before it is "
        "closed; it reopens, with the caller's log level, at its next use.",
    )
    max_pending_calls_per_caller: int = Field(
        4,
        ge=1,
        description="Calls of one caller that may wait for its input (2026-07-28 InputRequiredResult) at once; "
        "server.max_pending_calls bounds all callers together.",
    )
    max_sessions: int = Field(
        1000,
        ge=1,
        description="MCP sessions (2025-11-25 HTTP clients) open at once, in total; past it opening one is refused "
        "with 503 and Retry-After, and sessions already open keep working.",
    )
    max_sessions_per_address: int = Field(
        100,
        ge=1,
        description="MCP sessions open at once from one client address; past it opening one is refused with 429 "
        "and Retry-After. Every local client shares the loopback address.",
    )
    session_idle_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds an MCP session may go without a request in flight (no call, no open stream) before "
        "it is closed; the client then opens a new one.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="HTTP connections open at once; a connection past it is answered 503 and closed at once. "
        "Lowered at start to fit the process's open-file limit (raised to its hard limit first).",
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's line and headers, from connecting or from its first byte.",
    )
    http_body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's whole body once its headers are in."
    )
    http_keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle kept-alive HTTP connection stays open waiting for the next request."
    )


LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
# Signing algorithms a JWT access token may use: asymmetric only, so a public key can never verify an
# HMAC token made with it (no `none`, no HS*).
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ClaimNames(_Strict):
    """Where a token's claims (or an API key's entry) put who the caller is (dotted paths reach nested claims)."""

    # The caller's subject.
    subject: str = "sub"
    # Groups: a list of strings, or one space- or comma-separated string.
    groups: str = "groups"
    # Roles: as groups (e.g. `realm_access.roles` for Keycloak).
    roles: str = "roles"
    # The OAuth client the token was issued to (`azp` is used when this claim is absent).
    client_id: str = "client_id"
    # Granted scopes: a space-separated string or a list.
    scopes: str = "scope"


class OAuthConfig(_Strict):
    """The gateway as an OAuth 2.1 resource server (the MCP authorization specification)."""

    # The authorization server's issuer URL; tokens must carry exactly this `iss`. Its JWKS is found from its
    # metadata (`/.well-known/oauth-authorization-server`, then `/.well-known/openid-configuration`).
    issuer: str | None = None
    # This gateway's resource URI (RFC 8707/9728): the `aud` tokens must carry. Unset: `http://<host>:<port><path>`
    # of `server` (set it when clients reach the gateway through another name, a proxy or https).
    resource: str | None = None
    # The issuer's JWKS, instead of discovering it from the issuer's metadata.
    jwks_url: str | None = None
    # Signing algorithms accepted (asymmetric only).
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    # Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    clock_skew: float = Field(30.0, ge=0, le=300)
    # A token signed with a key id the cached JWKS lacks refreshes it, at most once per this many seconds.
    jwks_refresh_interval: float = Field(60.0, ge=0)
    # Seconds a fetched JWKS is used before it is fetched again.
    jwks_max_age: float = Field(3600.0, gt=0)
    # Seconds one request to the authorization server may take.
    timeout: float = Field(5.0, gt=0)
    # Scopes every request must carry (a token without them gets 403 insufficient_scope).
    required_scopes: list[str] = Field(default_factory=list)
    # Scopes advertised in the protected-resource metadata (default: `required_scopes`).
    scopes_supported: list[str] = Field(default_factory=list)
    # RFC 7662 token introspection endpoint: tokens that are not JWTs (opaque) are checked there.
    introspection_url: str | None = None
    # The gateway's own client id at the authorization server, for introspection.
    client_id: str | None = None
    # The environment variable holding that client's secret (never the secret itself in a file).
    client_secret_env: str | None = None
    # Seconds an introspected token's answer is reused (never past its `exp`).
    introspection_cache: float = Field(60.0, ge=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"not allowed: {bad}; choose from {list(JWT_ALGORITHMS)} (no `none`, no HS*)")
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value

    @model_validator(mode="after")
    def _introspection_client(self) -> OAuthConfig:
        if self.introspection_url and not (self.client_id and self.client_secret_env):
            raise ValueError("introspection_url needs `client_id` and `client_secret_env` (the gateway's credentials)")
        return self


class ApiKeysConfig(_Strict):
    """API keys sent as bearer tokens, stored only as SHA-256 hashes (`vmcp auth new-key` makes one)."""

    # A YAML or JSON file `{keys: [{sha256: <hex>, subject: ..., groups: [...], roles: [...]}]}`, re-read when
    # it changes (rotation and revocation without a restart); relative to the config file's directory.
    file: str | None = None
    # An environment variable holding the same entries as a JSON list (read at start).
    env: str | None = None


class IncomingAuthConfig(_Strict):
    """Who may connect (vmcp_opt/auth/): over HTTP one of `mode`; over stdio the local OS user is the caller."""

    # anonymous: anyone who reaches the port (loopback only unless `allow_anonymous_remote`); oauth: JWT access
    # tokens from `oauth.issuer`; api_keys: keys from `api_keys`.
    mode: Literal["anonymous", "oauth", "api_keys"] = "anonymous"
    # Serve anonymously on a non-loopback address (logged as a warning at every start).
    allow_anonymous_remote: bool = False
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    api_keys: ApiKeysConfig = Field(default_factory=ApiKeysConfig)
    claims: ClaimNames = Field(default_factory=ClaimNames)

    @model_validator(mode="after")
    def _mode_settings(self) -> IncomingAuthConfig:
        if self.mode == "oauth" and not self.oauth.issuer:
            raise ValueError("mode oauth needs `oauth.issuer`")
        if self.mode == "api_keys" and not (self.api_keys.file or self.api_keys.env):
            raise ValueError("mode api_keys needs `api_keys.file` or `api_keys.env`")
        return self


class AuthorizationConfig(_Strict):
    """What each caller may see and call: Cedar policies (vmcp_opt/auth/cedar.py); unset, everything."""

    # A Cedar policy file; relative to the config file's directory. A file that does not parse stops the start.
    policies: str | None = None
    # Decisions kept per (caller, action, target); a caller's visible tool set is kept per catalogue.
    cache_size: int = Field(100_000, ge=0)


class AuthConfig(_Strict):
    incoming: IncomingAuthConfig = Field(default_factory=IncomingAuthConfig)
    authorization: AuthorizationConfig = Field(default_factory=AuthorizationConfig)


_file_data: ContextVar[dict[str, Any] | None] = ContextVar("vmcp_config_file_data", default=None)


class AuditConfig(_Strict):
    """One JSON object per line per MCP operation (vmcp_opt/telemetry/audit.py); field names as ToolHive's."""

    # Write audit events.
    enabled: bool = False
    # `stdout`, or a file (relative to the config file's directory) rotated at `max_file_bytes`.
    output: str = "stdout"
    # Size at which the file is rotated.
    max_file_bytes: int = Field(default=50_000_000, ge=1024)
    # Rotated files kept beside the current one (`audit.log.1` … `audit.log.N`).
    backups: int = Field(default=5, ge=0)
    # Event types to write (`mcp_tool_call`, `mcp_tools_list`, `vmcp_find_tool`, `workflow_started`, …); empty: all.
    include: list[str] = Field(default_factory=list)
    # Event types never written (applied after `include`).
    exclude: list[str] = Field(default_factory=list)
    # Request arguments and results in `data`: off, as they may hold personal data; when on, keys that look
    # secret are redacted and each part is cut to `max_data_bytes`.
    include_data: bool = False
    # Bytes of JSON kept of each of the request and the response; longer is cut and marked `truncated`.
    max_data_bytes: int = Field(default=4096, ge=64)
    # Events waiting for the writer thread. Full: `drop` (counted and reported) or `block` the request for
    # at most `block_timeout` seconds, then drop.
    queue_size: int = Field(default=10_000, ge=1)
    # What a request does when the queue is full: `drop` the event at once, or `block` first.
    when_full: Literal["drop", "block"] = "drop"
    # Seconds a request waits for room under `when_full: block` before the event is dropped.
    block_timeout: float = Field(default=0.05, ge=0)


class MetricsConfig(_Strict):
    """Prometheus metrics (vmcp_opt/telemetry/metrics.py)."""

    # Count and time requests, backend calls, find_tool; serve them for Prometheus.
    enabled: bool = False


class TracingConfig(_Strict):
    """OpenTelemetry traces (vmcp_opt/telemetry/tracing.py), exported over OTLP as the standard `OTEL_*`
    environment variables say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, …)."""

    # A span per request and per backend call; W3C trace context from the client's `_meta` to the backends'.
    enabled: bool = False
    # Share of new traces recorded (0 to 1; a client's sampled flag is followed). None: `OTEL_TRACES_SAMPLER`
    # and `OTEL_TRACES_SAMPLER_ARG` decide, and without them every trace is recorded.
    sample_ratio: float | None = Field(default=None, ge=0, le=1)


class TelemetryConfig(_Strict):
    """What the gateway did, for operators: audit log, metrics and traces. All off by default."""

    # One JSON line per MCP operation.
    audit: AuditConfig = Field(default_factory=AuditConfig)
    # Prometheus metrics at `/metrics` on the main listener.
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # OpenTelemetry spans, exported over OTLP.
    tracing: TracingConfig = Field(default_factory=TracingConfig)


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
