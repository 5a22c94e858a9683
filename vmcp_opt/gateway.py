"""The gateway assembled: backends, health, catalogue, sessions, router and providers, and their lifecycle.

This is the composition root. It builds each part, registers the tool providers on the router (the
optimizer's meta-tools first when it is on, then the configured workflows, then the backends' tools), and keeps the catalogue and
find_tool's index in step with the backends. Transports (`server/`) serve its router; nothing below
imports this module.

Just past ~450 lines: the composition root wires every part once; splitting it would scatter the wiring.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from vmcp_opt.aggregation import Catalog, LiveCatalog
from vmcp_opt.arguments import ArgumentValidator
from vmcp_opt.backends import BackendConnection, BackendManager, BackendState
from vmcp_opt.backends.credentials import with_auth_health
from vmcp_opt.code_mode.provider import ScriptTools
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import HealthMonitor
from vmcp_opt.health.breaker import CircuitBreaker
from vmcp_opt.routing import BackendTools, Policy, Router, SessionChooser
from vmcp_opt.shared.factories import change_broadcast, usage_history
from vmcp_opt.shared.rate_limits import rate_limiter
from vmcp_opt.shared.state_keys import state_keys, unshared_key_warning
from vmcp_opt.telemetry import Telemetry
from vmcp_opt.workflows.budget import HeldOutputBytes
from vmcp_opt.workflows.provider import WorkflowTools
from vmcp_opt.workflows.renders import RenderSlots
from vmcp_opt.workflows.rounds import WorkflowRounds
from vmcp_opt.workflows.validation import unknown_tools

if TYPE_CHECKING:  # the optimizer's modules import numpy and faiss: loaded only when the optimizer is on
    from vmcp_opt.optimizer.index import UpdateStats
    from vmcp_opt.optimizer.metatools import OptimizerFront

logger = logging.getLogger(__name__)
# Seconds before a background loop of the gateway's that failed unexpectedly runs again (`_kept_running`).
RESTART_DELAY = 5.0
# Seconds a stop waits for the workflow runs it cancelled to write their end before telemetry closes.
RUNS_END_WAIT = 5.0

ListKind = Literal["tools", "prompts", "resources"]
ALL_LISTS: frozenset[ListKind] = frozenset(("tools", "prompts", "resources"))
ListsChanged = Callable[[frozenset[ListKind]], Awaitable[None]]


class StartupError(Exception):
    """`failure.mode: fail` and some backends did not connect; the message names them."""


class Gateway:
    def __init__(self, config: VmcpConfig) -> None:
        self.config = config
        self.backends = BackendManager(config)
        # Health checks and circuit breakers; every routed call goes through `health.guarded`, whichever session.
        self.health = HealthMonitor(self.backends, config)
        self.catalog = LiveCatalog(self.backends, config.aggregation)
        self.sessions = SessionChooser(
            self.backends.ready,
            input_timeout=config.timeouts.input,
            max_pending=config.server.max_pending_calls,
            spares=config.server.round_trip_spares,
            limits=config.limits,
        )
        self.router = Router(
            self.catalog,
            self.backends,
            self.sessions,
            self.health.guarded,
            policy=load_policy(config),
            call_log_rate=config.server.call_log_rate,
        )
        # Rate limits on tool calls (memory, or Redis shared by replicas); raises `SecretMissing`.
        self.router.limiter = self.limiter = rate_limiter(config)
        # The keys sealing 2026-07-28 request_state; None: a key of this process.
        self.state_keys = state_keys(config)
        if (unshared := unshared_key_warning(config)) is not None:
            logger.warning("%s", unshared)
        # Backend changes told to and heard from the other replicas (Redis pub/sub); None: not shared.
        self.changes = change_broadcast(config, self.backends.get, self.health.check)
        self.optimizer: OptimizerFront | None = None
        listed: Callable[[str], bool] = lambda name: True  # noqa: E731
        if config.optimizer.enabled:
            from vmcp_opt.optimizer.metatools import OptimizerFront

            self.optimizer = OptimizerFront(config, usage_history(config))
            self.optimizer.wait_for_backends = self.wait_for_backends
            self.optimizer.why_no_tools = self.why_no_tools
            self.router.add_provider(self.optimizer)
            self.router.observers.append(self.optimizer)
            pinned = frozenset(config.optimizer.pinned)
            listed = pinned.__contains__  # with the optimizer on, tools/list is the meta-tools and pinned tools
        self.scripts: ScriptTools | None = None
        if config.code_mode.enabled:  # before workflows and backends: the config gave the script tool its name
            self.scripts = ScriptTools(config.code_mode, config.limits.max_result_bytes, config.server.max_body_bytes)
            self.router.add_provider(self.scripts)
        validator = ArgumentValidator(config.limits.argument_check_timeout, config.limits.schema_cache_size)
        # Workflows before the backends' tools: a name the config gave keeps its meaning when a backend
        # later serves a tool of the same name (that tool is then reachable only under another name).
        self.workflows = WorkflowTools(
            config.workflows,
            self.catalog,
            validator,
            listed,
            input_timeout=config.timeouts.input,
            max_pending=config.server.max_pending_calls,
            owners=self.sessions.owners,
            pending_budget=self.sessions.round_trips.budget,  # one budget for calls and runs awaiting input
            max_result_bytes=config.limits.max_result_bytes,
            render_slots=RenderSlots.of(config.limits.workflow_renders),
            max_result_values=config.limits.max_result_values,  # a step's JSON text past it stays text
            held_outputs=HeldOutputBytes.of(config.limits.held_answer_bytes),  # what running runs hold
        )
        self.router.add_provider(self.workflows)
        self.router.add_provider(BackendTools(self.catalog, validator, listed))
        # Audit, metrics, traces: watchers of the router's operations (off unless `telemetry:` turns them on).
        self.telemetry = Telemetry(config)
        self.router.watchers.extend(self.telemetry.watchers)
        if self.telemetry.metrics is not None:  # read at each scrape
            self.telemetry.metrics.state.backends = self._backend_states
            self.telemetry.metrics.state.backend_messages = self._backend_messages
            if self.optimizer is not None:
                self.telemetry.metrics.state.index_size = self.optimizer.index.__len__
            if (limiter := self.limiter) is not None:
                self.telemetry.metrics.state.rate_limits_unchecked = lambda: limiter.unchecked
        # The tools of the index that have a vector, for /readyz: counted once per update, on the updating thread
        # (`index.stats()` lists the index directory, too slow for a probe answered on the event loop).
        self._indexed_with_vectors = 0
        if self.optimizer is not None:
            self.optimizer.index.updated = self._index_updated
        self.started = False
        # A backend changed after the first catalogue was built but before `started`: rebuild once started.
        self._changed_while_starting = False
        # A failure found after serving began (a name conflict while connecting in the background).
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        # Told which lists changed, so the transports can tell their clients.
        self.on_lists_changed: list[ListsChanged] = []
        # Cancelled by `stop`, so a shutdown during start-up never goes on to start health checks.
        self._background_connect: anyio.CancelScope | None = None
        # Cancelled by `stop`: the replica-changes listener runs until cancelled, and the task group that
        # holds it (the HTTP lifespan's) would otherwise never end, nor the process.
        self._changes_scope: anyio.CancelScope | None = None
        # Set once the first catalogue is built (or start-up gave up); made in `start`, inside the event loop.
        self._first_listing: anyio.Event | None = None
        self._stopping = False
        # The task group `start` was given: `stop` closes the optimizer in it, off the event loop.
        self._task_group: anyio.abc.TaskGroup | None = None
        self._rebuilding = anyio.Lock()
        self._rebuild_wanted = False
        self.backends.add_listener(self._on_backend_change)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect every backend and build the catalogue.

        Under `failure.mode: best_effort` this returns at once: the backends connect in the background and
        requests wait for their first listing (`wait_for_backends`), at most `server.startup_wait` seconds,
        after which the catalogue is built from the backends that are ready and the others join as they
        connect. Under `fail` it returns once every backend answered, and raises `StartupError` naming
        those that could not connect.
        """
        self._task_group = task_group
        self.sessions.attach(task_group)
        self.workflows.rounds.attach(task_group)
        if self.scripts is not None:
            self.scripts.attach(task_group)
        if self.changes is not None:
            task_group.start_soon(self._share_changes, name="replica-changes")
        self._first_listing = anyio.Event()
        if self.config.failure.mode == "best_effort":
            task_group.start_soon(self._connect_in_background, task_group, name="connect-backends")
            return
        await self._connect_and_build(task_group)

    async def _share_changes(self) -> None:
        assert self.changes is not None
        with anyio.CancelScope() as self._changes_scope:
            await self._kept_running("the listener of other replicas' changes", self.changes.run)

    async def _kept_running(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """`run`, a loop that ends only when the gateway stops, run again after an unexpected error (logged).
        Every such loop runs in the HTTP lifespan's task group: an error raised there ended the group and the
        session manager with it, every request then failing while /readyz said ready."""
        while not self._stopping:
            try:
                await run()
                return
            except Exception:
                logger.exception("%s failed; it runs again in %g s", what, RESTART_DELAY)
            await anyio.sleep(RESTART_DELAY)

    async def first_catalogue(self) -> None:
        """Wait, however long the backends' connect timeouts allow, for the first catalogue (one-shot commands)."""
        if self._first_listing is not None:
            await self._first_listing.wait()

    async def wait_for_backends(self) -> list[str]:
        """Wait (at most `server.startup_wait`) for the first catalogue; the backends still starting after it."""
        if self._first_listing is not None:
            with anyio.move_on_after(self.config.server.startup_wait):
                await self._first_listing.wait()
        return self.starting()

    def starting(self) -> list[str]:
        """Backends whose first connection attempt has not ended yet."""
        return [c.name for c in self.backends.connections.values() if c.first_attempt_pending]

    def why_no_tools(self, name: str) -> str | None:
        """Why configured backend `name` has no tools in the catalogue, as find_tool says it to any client; None
        when no backend of that name is configured. Its state only: the backend's last error (exception text, its
        last stderr line: hosts, paths, DSNs) stays in /readyz and the logs, as `LiveCatalog.why_unavailable`'s."""
        connection = self.backends.get(name)
        if connection is None:
            return None
        if connection.state is BackendState.READY:
            return "connected but has no tools to search"
        return f"configured but not connected ({connection.state.value})"

    async def _connect_in_background(self, task_group: anyio.abc.TaskGroup) -> None:
        try:
            with anyio.CancelScope() as self._background_connect:
                if self._stopping:
                    return
                await self._connect_and_build(task_group)
        except StartupError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: stop, rather than answer /healthz while every request fails
            logger.exception("start-up failed")
            self._fail(StartupError(f"start-up failed: {type(exc).__name__}: {exc}"))
        finally:
            if self._first_listing is not None:
                self._first_listing.set()  # nothing more to wait for

    def _fail(self, exc: StartupError) -> None:
        self.fatal = exc
        logger.error("cannot serve: %s", exc)
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def _connect_and_build(self, task_group: anyio.abc.TaskGroup) -> None:
        # best_effort serves what is ready after `startup_wait`; fail waits for every backend.
        wait = self.config.server.startup_wait if self.config.failure.mode == "best_effort" else math.inf
        with anyio.move_on_after(wait):
            await self.backends.start(task_group)
        down = self.backends.not_ready()
        if down and self.config.failure.mode == "fail":
            self.backends.stop()
            names = "; ".join(f"{c.name} ({c.last_error or c.state.value})" for c in down)
            message = f"failure.mode is fail and these backends could not connect: {names}"
            logger.error("cannot start: %s", message)
            raise StartupError(message)
        late = self.starting()
        if late:
            logger.info(
                "backends still starting after %gs: %s; serving the others, they join when ready",
                wait,
                ", ".join(late),
            )
            for name in late:
                join = functools.partial(self._join_when_ready, self.backends.connections[name])
                task_group.start_soon(self._kept_running, f"backend {name}'s late join", join, name=f"join:{name}")
        task_group.start_soon(self._kept_running, "the health checks", self.health.run, name="health")
        self._changed_while_starting = False
        async with self._rebuilding:  # a late backend joining meanwhile rebuilds after this, not beside it
            await self.catalog.rebuild()
            await self._tools_changed()
        self.started = True
        if self._first_listing is not None:
            self._first_listing.set()
        if self._changed_while_starting:
            # e.g. a backend lost while the index took the first catalogue: its tools must leave now,
            # not at its next change.
            await self._rebuild_catalog()
        await self._lists_changed(ALL_LISTS)  # clients that connected while the backends were connecting
        catalog = self.catalog.current
        logger.info(
            "catalogue: %d tools, %d prompts, %d resources, %d resource templates",
            len(catalog.tools),
            len(catalog.prompts),
            len(catalog.resources),
            len(catalog.templates),
        )

    async def _join_when_ready(self, connection: BackendConnection) -> None:
        """A backend slower than `startup_wait`: its first session does not announce itself, so rebuild here."""
        await connection.wait_ready()
        if self._stopping:
            return
        if connection.state is BackendState.READY:
            logger.info("backend %s joined after start-up", connection.name)
            await self._rebuild_catalog()
        else:
            self._check_workflows()  # no rebuild follows a failed first attempt; the last one to end says it

    def _index_updated(self, stats: UpdateStats) -> None:
        """Told by the index after each update it made. Never raises: the update already happened, and the callback
        runs inside it (a failure here failed a successful update)."""
        try:
            if self.optimizer is not None:
                # From memory: `index.stats()` lists the index directory, racing the index's own writes.
                self._indexed_with_vectors = self.optimizer.index.with_vectors
            if self.telemetry.metrics is not None:
                self.telemetry.metrics.index_updated(stats.stage, stats.seconds, stats.embedded, stats.reused)
        except Exception:
            logger.exception("optimizer: the index was updated, but telling readiness and metrics of it failed")

    def _backend_states(self) -> list[tuple[str, str, str]]:
        """Each backend's health and circuit state, for the metrics."""
        health = self.health
        return [(name, health.health[name].state.value, _circuit(health.breakers[name])) for name in health.health]

    def _backend_messages(self) -> list[tuple[str, str, int]]:
        """The messages each backend's shared session received, by kind, for the metrics."""
        connections = self.backends.connections.values()
        return [(c.name, kind, count) for c in connections for kind, count in c.inbound.totals.items()]

    def stop(self) -> None:
        self._stopping = True
        if self._background_connect is not None:
            self._background_connect.cancel()
        if self._changes_scope is not None:
            self._changes_scope.cancel()
        self.sessions.stop()
        self.workflows.rounds.stop()
        if self.scripts is not None:
            self.scripts.spare.stop()
        self.health.stop()
        self.backends.stop()
        if self._first_listing is not None:
            self._first_listing.set()
        if self.optimizer is not None:
            self._close_optimizer(self.optimizer)
        self._close_telemetry()

    def _close_telemetry(self) -> None:
        """Closed once the workflow runs `stop` cancelled have ended (at most `RUNS_END_WAIT` later), awaited by the
        task group `start` was given: a run's cancellation is handled when its task next runs, after `stop`, and its
        `cancelled` end written after the audit log closed was lost. Without runs or that task group: here."""
        if len(self.workflows.rounds) and self._task_group is not None:
            try:
                self._task_group.start_soon(_close_after_runs, self.workflows.rounds, self.telemetry)
                return
            except RuntimeError:  # the task group has ended: nobody would await the runs
                pass
        self.telemetry.close()

    def _close_optimizer(self, optimizer: OptimizerFront) -> None:
        """Close the optimizer on a worker thread, awaited by the task group `start` was given (its owner's exit
        waits for it). Its close blocks for seconds while a large catalogue is embedded (the wait for the
        embedder, the files' locks): on the event loop that held back the error answers of the calls a stop cut
        off, and the backends' own stop, by as long (5 s measured). Without that task group (never started, or
        already ended) it closes here."""
        if self._task_group is not None:
            try:
                self._task_group.start_soon(_close_off_loop, optimizer, name="optimizer-close")
                return
            except RuntimeError:  # the task group has ended: nobody would await the thread
                pass
        optimizer.close()

    async def _on_backend_change(self, connection: BackendConnection) -> None:
        self.sessions.backend_changed(connection)
        if not self.started:
            self._changed_while_starting = True
            return  # `start` builds the catalogue once every backend has answered
        if self._stopping:
            # Backends stop one by one: shrinking the catalogue would drop their vectors from the
            # persisted index, and the next start would embed them all again.
            return
        await self._rebuild_catalog()
        if self.changes is not None:
            await self.changes.backend_changed(connection)

    async def _rebuild_catalog(self) -> None:
        # One rebuild at a time, each reading every listing afresh: a change that arrives while one runs is
        # taken in by the next, so a burst of changes (backends reconnecting together) costs two rebuilds.
        self._rebuild_wanted = True
        async with self._rebuilding:
            if not self._rebuild_wanted:
                return  # a rebuild that began after this change has taken it in
            self._rebuild_wanted = False
            # Off the event loop, like the merge: without the optimizer the lists hold every tool.
            before = await anyio.to_thread.run_sync(self._listing)
            await self.catalog.rebuild()
            await self._tools_changed()
            changed = await anyio.to_thread.run_sync(self._changed_lists, before)
        await self._lists_changed(changed)

    def _changed_lists(self, before: dict[ListKind, list[object]]) -> frozenset[ListKind]:
        after = self._listing()
        return frozenset(kind for kind in ALL_LISTS if before[kind] != after[kind])

    async def _tools_changed(self) -> None:
        """find_tool's index follows every searchable provider's tools."""
        self.router.forget_views()
        # The providers' views of a new catalogue (a `ProvidedTool` per tool) are built here, on a worker
        # thread; requests then find them built.
        searchable = await anyio.to_thread.run_sync(self.router.searchable_tools)
        self._check_workflows()
        self._check_per_tool()
        if self.optimizer is None:
            return
        # The backends this catalogue was built without (rebuilds hold `_rebuilding`: it is the one just built).
        built_from = self.catalog.current.backend_descriptions
        not_connected = [name for name in self.backends.connections if name not in built_from]
        served = self.catalog.current.tools.keys() | self.workflows.workflows.keys()
        missing = [name for name in self.config.optimizer.pinned if name not in served]
        if missing:
            logger.warning("optimizer.pinned: no such tools in the catalogue: %s", ", ".join(missing))
        await self.optimizer.tools_changed(searchable, not_connected)

    def _check_per_tool(self) -> None:
        """Limits on tools the catalogue lacks (a misspelt key): a warning, since such a limit never applies."""
        served = self.catalog.current.tools.keys() | self.config.own_tool_names()
        missing = [name for name in self.config.rate_limits.per_tool if name not in served]
        # A backend still on its first attempt is missing, not unknown: the late join's rebuild checks again.
        report = logger.debug if self.starting() else logger.warning
        if missing:
            report("rate_limits.per_tool: no such tools in the catalogue, never limited: %s", ", ".join(missing))

    def _check_workflows(self) -> None:
        """Steps naming tools the catalogue lacks: a warning (the backend may connect later); such a step
        fails at run time with the router's `Unknown tool`."""
        if not self.config.workflows:
            return
        known = {t.name for t in self.router.searchable_tools()} | {t.name for t in self.router.listed_tools()}
        known |= self.catalog.current.workflow_only.keys()  # served to steps alone
        # While backends are still on their first attempt their tools are missing, not unknown: the check
        # runs again when the last of them joins or fails (`_join_when_ready`).
        report = logger.debug if self.starting() else logger.warning
        for problem in unknown_tools(self.config.workflows, known):
            report("%s", problem)
        shadowed = sorted(set(self.workflows.workflows) & set(self.catalog.current.tools))
        if shadowed:
            logger.warning("workflows named like backend tools (the workflow is served): %s", ", ".join(shadowed))

    def _listing(self) -> dict[ListKind, list[object]]:
        """What a client would be shown (before any policy): a change here is worth a list_changed."""
        catalog: Catalog = self.catalog.current
        resources: list[object] = [r.resource for r in catalog.resources.values()]
        return {
            "tools": list(self.router.listed_tools()),
            "prompts": [r.prompt for r in catalog.prompts.values()],
            "resources": resources + [t.template for t in catalog.templates],
        }

    async def _lists_changed(self, kinds: frozenset[ListKind]) -> None:
        if not kinds:
            return
        for listener in self.on_lists_changed:
            await listener(kinds)

    # --- views -----------------------------------------------------------------------------------

    def backend_summaries(self) -> list[dict[str, Any]]:
        connections = self.backends.connections.values()
        return [with_auth_health({**c.summary(), **self.health.summary(c.name)}) for c in connections]

    def readiness(self) -> Readiness:
        """`/readyz`: ready when every backend is up and healthy; `serving` says whether to send traffic."""
        backends = self.backend_summaries()
        up = [b["state"] == BackendState.READY.value and b["health"]["state"] != "unhealthy" for b in backends]
        ready = self.started and all(up)
        status = "ready" if ready else "degraded" if self.started else "starting"
        # best_effort serves what is healthy, so a load balancer should keep sending traffic while any
        # backend is up; under fail, or with nothing up, the gateway is not ready.
        serving = ready or (status == "degraded" and self.config.failure.mode == "best_effort" and any(up))
        body = {
            "status": status,
            "failure_mode": self.config.failure.mode,
            "tools": len(self.catalog.current.tools),
            "backends": backends,
            "optimizer": self._optimizer_readiness(),
        }
        return Readiness(serving, body)

    def _optimizer_readiness(self) -> dict[str, Any]:
        """Whether find_tool ranks by vectors yet, over how many tools, and why not when embedding them failed; not
        part of `serving` (until the model has loaded, or when it failed, find_tool ranks by keywords)."""
        if self.optimizer is None:
            return {"enabled": False}
        index = self.optimizer.index
        return {
            "enabled": True,
            "vectors_ready": index.dense_ready,
            # Why the last embedding failed (a corrupt model, a full disk...), or null: "not ready" alone read as loading.
            "vectors_failed": self.optimizer.embedding_failure,
            "tools": len(index),
            "with_vectors": self._indexed_with_vectors,
            "vectors_unsaved": index.vectors_unsaved,  # why the vectors were not written to disk, or null
        }


async def _close_after_runs(rounds: WorkflowRounds, telemetry: Telemetry) -> None:
    with anyio.CancelScope(shield=True):  # as `_close_off_loop`: the owner may cancel its task group after `stop`
        with anyio.move_on_after(RUNS_END_WAIT):  # a run stuck in a worker thread must not hold the stop
            await rounds.ended()
        telemetry.close()


async def _close_off_loop(optimizer: OptimizerFront) -> None:
    # Shielded: the owner may cancel its task group right after `stop` (`vmcp workflow run`), and the usage
    # history and the pending vectors must still be written.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(optimizer.close)


def load_policy(config: VmcpConfig) -> Policy | None:
    """The Cedar policy of `auth.authorization.policies`, or None (everything allowed).

    Raises `PolicyLoadError` naming the file, line and reason: a policy that does not load stops the start.
    """
    settings = config.auth.authorization
    if settings.policies is None:
        return None
    from vmcp_opt.auth.cedar import CedarPolicy  # cedarpy loads only when policies are configured

    path = config.resolve_path(settings.policies)
    policy = CedarPolicy.from_file(path, settings.cache_size, strict_modes=config.auth.strict_file_modes)
    logger.info("authorization: %d Cedar policies from %s", len(policy.policies), policy.source)
    return policy


@dataclass(frozen=True)
class Readiness:
    serving: bool
    body: dict[str, Any]


def _circuit(breaker: CircuitBreaker) -> str:
    """A breaker's state for the metrics: `disabled` as /readyz says it, not a `closed` that refuses nothing."""
    return breaker.state.value if breaker.config.enabled else "disabled"
