"""Bounds on what callers and backends can make the gateway hold, rate limits, and state shared by replicas.

Just past ~450 lines on purpose: one model of fields and their descriptions (the source of docs/configuration.md's
limits section), which a split would scatter across files the reference is generated from in one order."""

from __future__ import annotations

import urllib.parse
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vmcp_opt.config.base import _PerCallerWithinTotal, _Strict
from vmcp_opt.config.workflows import WorkflowRendersConfig

# `limits.max_result_values`'s default, also what a transport opened without it is given.
DEFAULT_MAX_RESULT_VALUES = 64 * 1024
# `limits.max_request_values`'s default, also what the HTTP front and stdio reader use when not told it.
DEFAULT_MAX_REQUEST_VALUES = 64 * 1024


class RequestsInFlightConfig(_PerCallerWithinTotal):
    """Client requests running at once (server/in_flight.py), for one caller (a verified subject, else the client's
    address, however many sessions and connections it uses) and for the whole gateway. A request past either is
    answered at once with a JSON-RPC error naming the bound (stdio: past `per_caller`). Over HTTP a 2025-11-25 call
    whose client left counts as one of its caller's `per_caller` "left" calls instead, the oldest cancelled past
    them."""

    # One caller's requests at once in this replica (keyed as rate limits key callers); over stdio, the client's.
    per_caller: int = Field(100, ge=1)
    # Every caller's requests at once (HTTP).
    total: int = Field(1000, ge=1)


class HeldAnswerBytesConfig(_PerCallerWithinTotal):
    """Bytes of answers written out that clients have not read yet (server/held_answers.py): held in the gateway's
    memory until the client takes them or `server.write_timeout` resets its connection, each counted once (its
    unsent bytes, or an SSE event while its write waits). Past either bound a call of that caller is answered with
    a JSON-RPC error naming the bound instead (one that ran says so: its result dropped, not sent again), and a
    resumption (GET with Last-Event-ID) with 429, until its client reads or goes away. Over stdio (one client)
    `per_caller` bounds the answers waiting behind the write it does not take."""

    # One caller's (keyed as requests_in_flight's); over stdio, the client's. 64 MiB: six answers of the default
    # limits.max_result_bytes left unread, at least (the kernel's socket buffers take part of each, uncounted).
    per_caller: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # Every caller's together (HTTP). 256 MiB: four callers that stopped reading at once.
    total: int = Field(256 * 1024 * 1024, ge=1024 * 1024)


class LimitsConfig(_Strict):
    """Bounds on what one backend can make the gateway do (issue 22)."""

    max_result_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest backend result passed on, counted as the characters of its text, data and "
        "structured content (about its JSON size); a larger one becomes an error naming the backend and the cap. "
        "A page of tools, resources, templates or prompts longer than it (with room for the envelope: a quarter "
        "more, at least 1 MiB) ends its list there, with a warning, the pages before it served.",
    )
    # 64 Ki: parsing and validating that many of the costliest values (text content blocks, ~2.6 µs each with
    # the answer's serialisation) holds the event loop ~170 ms; a plain number costs ~0.1 µs.
    max_result_values: int = Field(
        DEFAULT_MAX_RESULT_VALUES,
        ge=1024,
        description="Most values one backend answer or notification may hold, counted before it is parsed as the "
        "`{`, `[` and `,` of its JSON outside its strings: parsing and validating an answer holds the gateway's "
        "event loop in proportion to them (a long text is one value). Past it the answer is "
        "refused, an error naming the backend, the count and this setting (a tools/call's an error result), and "
        "the backend stays in service; a notification is dropped with a warning. A page of tools, resources, "
        "templates or prompts is held to the larger of this and 1,048,576 values instead: past it the page is "
        "refused unparsed and its list ends there, with a warning, the pages before it served. Counted: a stdio "
        "backend's "
        "lines, a streamable HTTP backend's JSON answers and each of its SSE events (a notification on a call's "
        "stream past it fails that call); a backend on the 2024 SSE transport is bounded by bytes alone.",
    )
    # 64 Ki: a client's message is parsed and validated on the event loop several times (a 2025-11-25 ping with a
    # `_meta` of 300,000 keys held it ~0.45 s, a tools/call ~1 s); 64 Ki values cost a fifth of that, and no real
    # request holds that many (a tool's arguments are a few dozen; big data comes as one string, one value).
    max_request_values: int = Field(
        DEFAULT_MAX_REQUEST_VALUES,
        ge=1024,
        description="Most values one client message may hold (over HTTP a POST's body, a JSON-RPC batch counted "
        "whole; over stdio a line), counted before it is parsed as the `{`, `[` and `,` of its JSON outside its "
        "strings: `server.max_body_bytes` bounds its bytes, but parsing and validating it holds the gateway's event "
        "loop, for every client, in proportion to its values (a long string is one value). Past it the message is "
        "refused unparsed with a JSON-RPC -32600 error naming the count, the bound and this setting (HTTP status "
        "413, as past `server.max_body_bytes`).",
    )
    workflow_renders: WorkflowRendersConfig = Field(
        default_factory=WorkflowRendersConfig,
        description="Workflow template renders running at once (worker threads): `total` for the gateway, "
        "`per_caller` over one caller's runs, `per_run` for one run; a freed one goes to the waiting caller holding "
        "fewest.",
    )
    list_changed_interval: float = Field(
        1.0,
        ge=0,
        description="Least seconds between two re-fetches of a backend's lists: a burst of list_changed "
        "notifications costs one re-fetch, and a flood one every this many seconds.",
    )
    list_changed_pace: float = Field(
        4.0,
        ge=0,
        description="After a re-fetch of a backend's lists that took T seconds (the listing, the catalogue's "
        "rebuild, the index), the next waits at least this many times T: a backend whose lists are costly to "
        "take in gets at most 1/(1 + pace) of the gateway's time by announcing changes. 0: only the interval.",
    )
    # 50,000: past the largest catalogues the gateway is measured with, and a 1,000-page listing of 40 a page.
    max_listed_items_per_backend: int = Field(
        50_000,
        ge=1,
        description="Items the gateway takes in from one list of one backend (its tools, its resources, its "
        "resource templates, its prompts), across all pages; past it the list is cut there, what was read served, "
        "with a warning naming the backend. A list is also cut past 128 MiB of JSON.",
    )
    argument_check_timeout: float = Field(
        1.0,
        gt=0,
        description="Deadline of one check of a call's arguments against the tool's schema; past it the call "
        "is refused, not sent.",
    )
    schema_cache_size: int = Field(
        1024,
        ge=1,
        description="Compiled tool schemas kept, as many input schemas (argument checks) and as many output "
        "schemas (structured result checks), least recently used first out.",
    )
    max_dedicated_sessions: int = Field(
        64,
        ge=1,
        description="Backend sessions opened for single callers (clients with sampling, elicitation or roots, "
        "log levels, subscriptions), in total; each is a process for a stdio backend. Past it a call goes on the "
        "shared session and a subscription is refused.",
    )
    max_dedicated_sessions_per_caller: int | None = Field(
        None,
        ge=1,
        description="Dedicated backend sessions one caller may hold at once, counted over all its MCP sessions (each "
        "MCP session that needs one gets its own per backend it uses): a caller is the verified subject, else the "
        "client's address (every local client "
        "shares the loopback address, so a machine's local clients together, e.g. a conformance suite's 30 sessions, "
        "are one caller). Default: half of max_dedicated_sessions, at least 1 (32 of 64), so no one caller takes them "
        "all; at most max_dedicated_sessions. Past it a call goes on the shared session and "
        "a log level or subscription is refused naming this limit.",
    )
    # One every 4 s: a client that reconnects now and then never meets it (the burst covers a suite's sessions),
    # while one that opens, calls and closes in a loop starts 15 processes a minute, not one per loop.
    dedicated_session_start_rate: float = Field(
        0.25,
        gt=0,
        description="Dedicated backend sessions one caller (as for max_dedicated_sessions_per_caller) may start per "
        "second, after a burst as large as max_dedicated_sessions_per_caller (at least 8): closing a session frees "
        "its slot, so a client that opens an MCP session, calls and closes it in a loop would otherwise start a backend "
        "process each time. Past it a call goes on the shared session and a log level or subscription is refused "
        "naming this limit.",
    )
    dedicated_idle_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a dedicated backend session may go unused (no call, no subscription) before it is "
        "closed; it reopens, with the caller's log level, at its next use.",
    )
    # 5 minutes: a client doing round-trip calls calls again well within it, so its spare still saves the
    # start; one that does not pays one session start, while a burst of odd clients leaves no process for ever.
    round_trip_spare_idle_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a spare backend session kept for 2026-07-28 round-trip calls (server.round_trip_spares) "
        "may wait for a call with its capabilities; past it the spare is closed (a process, for a stdio backend) "
        "and not replaced until such a call comes again.",
    )
    requests_in_flight: RequestsInFlightConfig = Field(
        default_factory=RequestsInFlightConfig,
        description="Client requests running at once (calls, listings, reads), `per_caller` for one caller (a "
        "verified subject, else the client's address, however many sessions and connections it uses) and `total` "
        "for the gateway (each replica counts its own); a request past either is answered at once with a JSON-RPC "
        "error naming the bound. Every "
        "local client shares the loopback address, and every client behind a proxy not in server.trusted_proxies "
        "the proxy's: raise `per_caller` with max_connections_per_address for many such clients.",
    )
    held_answer_bytes: HeldAnswerBytesConfig = Field(
        default_factory=HeldAnswerBytesConfig,
        description="Bytes of answers the gateway has written but clients have not read yet (a client that stops "
        "reading its sockets or stdout leaves them in the gateway's memory until server.write_timeout resets it): "
        "`per_caller` for one caller (keyed as requests_in_flight's), `total` for the gateway; each answer counted "
        "once, while the gateway holds it. Past either a call of that caller is answered with a JSON-RPC error "
        "naming the bound (one that already ran says so: its result dropped, not sent again), and a resumed stream "
        "(GET with Last-Event-ID) with 429 and Retry-After, until its client reads or goes away. A reading client's "
        "answers leave as it takes them and count only while they wait for it. The same bounds apply, counted "
        "separately, to the step results and outputs running workflows hold (a result from its arrival); past either "
        "a step fails naming the bound.",
    )
    max_pending_calls_per_caller: int = Field(
        4,
        ge=1,
        description="Calls of one caller that may wait for its input (2026-07-28 InputRequiredResult) at once; "
        "past it a new call or workflow run ends the caller's own longest-waiting call or run (a call's backend "
        "request cancelled, a run's steps cancelled; its retry told it expired) instead of being refused, unless "
        "every one is in progress (a client cannot say it gave up on a round). server.max_pending_calls bounds all callers together, and past it a new call is refused.",
    )
    max_subscriptions_per_caller: int = Field(
        1000,
        ge=1,
        description="Resource subscriptions (resources/subscribe) one caller (the verified subject, else the client's "
        "address, however many sessions it opens) may hold at once, across backends, in this replica; "
        "each is kept at its backend and replayed when the client's backend session reopens. It also bounds the "
        "resources one caller's 2026-07-28 `subscriptions/listen` streams follow together; past it a stream's "
        "acknowledgement leaves the rest out.",
    )
    # Distinct resources followed at backends for 2026-07-28 listeners (each held once, however many listen).
    max_listened_resources: int = Field(
        10000,
        ge=1,
        description="Distinct resources the gateway subscribes to at backends, on their shared sessions, for "
        "2026-07-28 `subscriptions/listen` streams (however many streams follow one, it counts once); past it a "
        "stream's acknowledgement leaves the new ones out.",
    )
    # 256: about a third of a second of subscribes at a local stdio backend; four streams reach the per-caller bound.
    max_resources_per_listen: int = Field(
        256,
        ge=1,
        description="Distinct resource URIs one 2026-07-28 `subscriptions/listen` request may name; a request "
        "naming more is refused with an error naming this limit (split them over several streams). Each URI new "
        "to a 2025-11-25 backend costs one `resources/subscribe` there before the stream is acknowledged.",
    )
    max_sessions: int = Field(
        1000,
        ge=1,
        description="MCP sessions (2025-11-25 HTTP clients) open at once in this process (each replica counts its "
        "own, a restored copy included); past it opening one is refused "
        "with 503 and Retry-After, and sessions already open keep working.",
    )
    max_sessions_per_address: int = Field(
        100,
        ge=1,
        description="MCP sessions open at once from one client address, in this replica (each counts its own); "
        "past it opening one is refused with 429 "
        "and Retry-After. Every local client shares the loopback address, and every client behind a reverse proxy "
        "the proxy's, unless the proxy is in server.trusted_proxies: raise this for many local clients.",
    )
    max_sessions_per_caller: int | None = Field(
        None,
        ge=1,
        description="MCP sessions one verified caller (an API key's or token's subject, whatever addresses it "
        "connects from) may hold open at once; past it opening one is refused with 429 and Retry-After. A verified "
        "caller's sessions count here instead of against max_sessions_per_address, so callers sharing an address "
        "do not share its bound; anonymous callers stay counted per address. Unset: max_sessions_per_address. Each "
        "replica counts its own (sessions.store: redis too).",
    )
    max_streams_per_caller: int = Field(
        50,
        ge=1,
        description="Streams one caller (the verified subject, else the client's address) may hold open at once: "
        "2025-11-25 GET event streams (resumptions included) and 2026-07-28 `subscriptions/listen` streams, "
        "together; past it a GET is answered 429 with Retry-After and a listen request a JSON-RPC error, each "
        "naming this limit. Each held stream holds a connection: keep it below max_connections_per_address, so a "
        "caller at its bound leaves connections for the other callers of its address.",
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
        description="HTTP connections open at once; a connection past it is answered 503 (Retry-After, a JSON-RPC "
        "error naming this limit) and closed. Lowered at start to fit the process's open-file limit (raised to its "
        "hard limit first).",
    )
    max_connections_per_address: int = Field(
        100,
        ge=1,
        description="HTTP connections one client address may hold open at once; past it a connection is answered "
        "429 and closed, unless its one request is a GET of /healthz, /readyz or /metrics (at most 8 such connections "
        "per listener, 4 of them from one address, shared with those past max_connections: probes from an address "
        "clients share). Without it "
        "one client (slow calls, open streams) could hold every connection of "
        "max_connections, /healthz's included. Connections from server.trusted_proxies are not counted.",
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's line and headers, from connecting or from its first byte.",
    )
    http_body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's whole body once its headers are in."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line and headers of one HTTP request, in bytes; past it the request is "
        "answered 431 and its connection closed.",
    )
    http_keep_alive_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds an idle kept-alive HTTP connection stays open waiting for the next request. Behind "
        "a load balancer that keeps its connections to the gateway open, set it longer than the balancer's idle "
        "timeout for them (60 s for AWS ALB and for ingress-nginx's upstream keep-alive), so that the balancer "
        "closes an idle connection first: a request it sends on a connection the gateway is closing is lost (a "
        "502), and HTTP clients do not resend a POST.",
    )

    @model_validator(mode="after")
    def _dedicated_per_caller_within_total(self) -> LimitsConfig:
        most = self.max_dedicated_sessions_per_caller
        if most is not None and most > self.max_dedicated_sessions:
            raise ValueError(
                f"max_dedicated_sessions_per_caller ({most}) is more than max_dedicated_sessions "
                f"({self.max_dedicated_sessions}); lower max_dedicated_sessions_per_caller"
            )
        return self

    def sessions_per_caller(self) -> int:
        """The per-caller bound on sessions: the one set, else the per-address one."""
        return self.max_sessions_per_address if self.max_sessions_per_caller is None else self.max_sessions_per_caller

    def dedicated_sessions_per_caller(self) -> int:
        """The per-caller bound on dedicated sessions: the one set, else half the total (at least 1)."""
        if self.max_dedicated_sessions_per_caller is not None:
            return self.max_dedicated_sessions_per_caller
        return max(1, self.max_dedicated_sessions // 2)


class RedisConfig(_Strict):
    """The Redis server that replicas share: rate limits (`rate_limits.store`), sessions and their SSE events
    (`sessions.store`), the optimizer's learning (`optimizer.usage_store`), backend changes (`share_changes`)."""

    # `redis://host:port/db`, or `rediss://…` for TLS. No password here: `password_env` or `password_file`.
    url: str = "redis://127.0.0.1:6379/0"
    # Environment variable holding the password.
    password_env: str | None = None
    # File holding the password (a mounted Secret), relative to the config file's directory.
    password_file: str | None = None
    # Prefix of every key the gateway writes, so several deployments can share one Redis: give each its own,
    # or they share rate-limit budgets, backend-change broadcasts, what find_tool learns and session ids.
    key_prefix: str = "vmcp:"
    # Seconds to connect and to run one command; past it Redis counts as unreachable (until a probe, at most one a
    # second, is answered: requests meanwhile skip the session touch and the rate check, failing open).
    timeout: float = Field(0.25, gt=0)
    # Tell every replica of the backend changes this one notices (tools, prompts, resources, connection
    # state), by pub/sub on `<key_prefix>changes`: the others re-list that backend, and their clients get
    # `list_changed`. For replicas whose backends are the same servers (HTTP) or equivalent processes.
    share_changes: bool = False
    # Connect with redis-py's RedisCluster, seeding from `url` (any node of the cluster; it finds the others): for a
    # Redis Cluster, as managed Redis in cluster mode offers. `url` must then name database 0, the only one a cluster has.
    cluster: bool = False

    @model_validator(mode="after")
    def _cluster_database(self) -> RedisConfig:
        database = urllib.parse.urlsplit(self.url).path.strip("/") or "0"
        if self.cluster and database != "0":
            raise ValueError(
                f"url: database {database} with cluster: true; a Redis Cluster has database 0 only: end the URL with /0"
            )
        return self

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss:// (TLS)")
        if "@" in value.split("//", 1)[1].split("/", 1)[0] or _credential_in_query(value):
            raise ValueError("no credentials in the URL: use password_env or password_file")
        return value


def _credential_in_query(url: str) -> bool:
    """redis-py also reads `?password=` and `?username=`: a secret there would be logged and shown with the URL."""
    query = urllib.parse.urlsplit(url).query
    return any(key.lower() in ("password", "username") for key, _ in urllib.parse.parse_qsl(query))


class BucketConfig(_Strict):
    """A token bucket: `burst` calls at once, then `rate` calls per second."""

    # Tokens added per second: the sustained calls per second.
    rate: float = Field(gt=0)
    # Most tokens the bucket holds: the calls allowed in a burst.
    burst: int = Field(ge=1)


class ToolBucketConfig(_Strict):
    """A tool's token bucket: `burst` calls at once, then `rate` calls per second."""

    # Tokens added per second: the sustained calls per second.
    rate: float = Field(gt=0)
    # Most tokens the bucket holds: the calls allowed in a burst.
    burst: int = Field(ge=1)
    # One bucket per caller for this tool, instead of one bucket for every caller together.
    per_caller: bool = False


class RateLimitsConfig(_Strict):
    """Token buckets on tool calls and the other requests forwarded to a backend (vmcp_opt/shared/rate_limits.py).
    A call takes a token from each bucket that applies, or from none: a refusal by one bucket drains no other. A
    call through `call_tool` or a workflow step takes only its own tool's bucket (the caller already paid for the
    request). `resources/read`, `prompts/get`, `completion/complete`, `resources/subscribe` and `logging/setLevel`
    take the caller's and the shared bucket's token as a tool call does; the lists, `ping` and
    `resources/unsubscribe` are free."""

    # `memory`: buckets of this process. `redis`: buckets in `redis`, shared by every replica.
    store: Literal["memory", "redis"] = "memory"
    # One bucket per caller: a verified subject (the same on every replica), else, over HTTP, the client's
    # address (X-Forwarded-For's behind `server.trusted_proxies`), whatever sessions it opens or skips, so
    # clients behind one address share a bucket; over stdio the one client. Each tool call, resource read,
    # prompt, completion, subscription and log level takes a token. Unset: none.
    per_caller: BucketConfig | None = None
    # One bucket for every caller together, paid as `per_caller` is; unset: none.
    shared: BucketConfig | None = None
    # Buckets per tool name (as clients call it: `call_tool`, `find_tool`, a backend's exposed name).
    per_tool: dict[str, ToolBucketConfig] = Field(default_factory=dict)
    # Redis unreachable: calls pass (fail open); one warning per this many seconds, every miss counted.
    log_interval: float = Field(60.0, gt=0)


class SessionsConfig(_Strict):
    """Where 2025-11-25 MCP sessions live (vmcp_opt/server/shared_sessions.py)."""

    # `memory`: sessions of this process (a load balancer needs affinity). `redis`: each session's state
    # (negotiated version, client capabilities and info, log level, resource subscriptions) and its SSE
    # events are in `redis`, so any replica serves any session; a key lives `limits.session_idle_timeout`
    # past the session's last use, on whichever replica.
    store: Literal["memory", "redis"] = "memory"
    # Redis failing (unreachable, refusing the password), a request naming a session this replica does not
    # hold is answered 503 with Retry-After (the client keeps the session and retries) for this many seconds
    # from the first failed call, then 404 (the client opens a new session here); 0: 404 at once.
    outage_grace_seconds: float = Field(10.0, ge=0, le=3600)
    # Events kept per SSE stream for resumption with Last-Event-ID (oldest dropped first), in redis mode.
    max_events_per_stream: int = Field(1000, ge=1)
    # Events kept per session for resumption, in either store: past it the session's oldest are dropped.
    max_events_per_session: int = Field(1000, ge=1)
    # Bytes (the messages' JSON) of the events kept per session, in either store: past it the session's oldest
    # are dropped; its newest stays whatever its size.
    max_event_bytes_per_session: int = Field(8 * 1024 * 1024, ge=1)
    # Events of all sessions together, in memory mode (one process's sessions).
    max_events_in_memory: int = Field(10_000, ge=1)
    # Bytes of the events of all sessions together, in memory mode: past it the oldest event of the caller holding
    # the most is dropped.
    max_event_bytes_in_memory: int = Field(64 * 1024 * 1024, ge=1)
    # Bytes of the events one caller's sessions keep together, in memory mode: past it the caller's oldest are
    # dropped, its newest kept whatever its size. A caller: the verified principal, else the client's address. A
    # client resuming after an event dropped is refused (400).
    max_event_bytes_per_caller_in_memory: int = Field(16 * 1024 * 1024, ge=1)
    # Bytes of the events one caller's sessions keep together, in redis mode (its sessions on every replica):
    # past it the caller's oldest are dropped, from its session written longest ago on, its newest kept whatever
    # its size. A caller: the verified principal, else the client's address. A client resuming after an event
    # dropped is refused (400).
    max_event_bytes_per_caller_in_redis: int = Field(32 * 1024 * 1024, ge=1)
    # Bytes of the events of all sessions together, in redis mode (every replica's): past it a new event is not
    # stored; its client still gets it, but resuming after it is refused (400).
    max_event_bytes_in_redis: int = Field(256 * 1024 * 1024, ge=1)


class RequestStateConfig(_Strict):
    """The key sealing 2026-07-28 `request_state`. Replicas behind one load balancer must share it, so a
    client's retry can land on any of them. Unset: a key of this process (one replica only).
    Rotation: put the old key in `previous_key_*` and the new one in `key_*`; drop the old after
    `timeouts.input`. Keys are secrets of at least 32 bytes, from the environment or a file, never here."""

    # Environment variable holding the key that seals (and unseals).
    key_env: str | None = None
    # File holding that key (a mounted Secret), relative to the config file's directory.
    key_file: str | None = None
    # Environment variable holding the previous key: still unseals, never seals.
    previous_key_env: str | None = None
    # File holding the previous key.
    previous_key_file: str | None = None

    @model_validator(mode="after")
    def _one_source_each(self) -> RequestStateConfig:
        if self.key_env and self.key_file:
            raise ValueError("key_env and key_file: set one")
        if self.previous_key_env and self.previous_key_file:
            raise ValueError("previous_key_env and previous_key_file: set one")
        if (self.previous_key_env or self.previous_key_file) and not (self.key_env or self.key_file):
            raise ValueError("a previous key needs a current one (key_env or key_file)")
        return self
