"""The router, one concern at a time: lookup, the policy hook, session choice per caller, the guarded send.

Providers here are small tool providers of the tests' own (the interface is ours); the session and
guard tests run against a real demo backend process and the real health monitor.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from tests.support import DEMO_SERVER
from vmcp_opt.aggregation import LiveCatalog
from vmcp_opt.arguments import ArgumentValidator
from vmcp_opt.auth import Caller, CallerLifetime, Identification
from vmcp_opt.backends import BackendManager
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import CallClock, HealthMonitor
from vmcp_opt.optimizer.metatools import OptimizerFront
from vmcp_opt.routing import (
    BackendTools,
    Decision,
    Denied,
    Exchange,
    ProvidedTool,
    Router,
    SessionChooser,
    Target,
    ToolCall,
    UnknownTool,
)
from vmcp_opt.routing.sessions import CallerSession, RoundTripSession, SharedSession

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
SAMPLING = types.ClientCapabilities(sampling=types.SamplingCapability())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def caller(name: str, **fields: object) -> Caller:
    defaults: dict[str, object] = {"identified_by": Identification.SESSION, "protocol_version": HANDSHAKE}
    return Caller(id=name, **{**defaults, **fields})  # type: ignore[arg-type]


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, description=f"the {name} tool", input_schema={"type": "object"})


class EchoProvider:
    """Serves named tools; a call answers with the provider's name and the caller's id."""

    searchable = True

    def __init__(self, name: str, tools: Sequence[str], gone: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._tools = {t: ProvidedTool(t, tool(t), name, t) for t in tools}
        self._gone = dict(gone or {})
        self.calls: list[tuple[str, str]] = []

    def tools(self) -> Mapping[str, ProvidedTool]:
        return self._tools

    def listed(self) -> Sequence[ProvidedTool]:
        return list(self._tools.values())

    def why_unavailable(self, name: str) -> str | None:
        return self._gone.get(name)

    async def call(self, call: ToolCall) -> types.CallToolResult:
        self.calls.append((call.caller.id, call.tool.name))
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{self.name}:{call.caller.id}")])


class RecordingPolicy:
    """Denies the listed tool names; remembers every question it was asked."""

    def __init__(self, denied: set[str], reason: str = "not on the allow list") -> None:
        self.denied = denied
        self.reason = reason
        self.asked: list[tuple[str, Target]] = []

    def decide(self, who: Caller, target: Target) -> Decision:
        self.asked.append((who.id, target))
        return Decision(False, self.reason) if target.name in self.denied else Decision(True)


def bare_router(config: VmcpConfig | None = None) -> Router:
    config = config or VmcpConfig()
    backends = BackendManager(config)
    sessions = SessionChooser(backends.ready, input_timeout=5, max_pending=4)
    return Router(
        LiveCatalog(backends, config.aggregation), backends, sessions, HealthMonitor(backends, config).guarded
    )


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


# --- lookup ------------------------------------------------------------------------------------------


async def test_the_first_provider_that_serves_a_name_wins_and_lists_come_in_provider_order() -> None:
    router = bare_router()
    first, second = EchoProvider("first", ["shared", "a"]), EchoProvider("second", ["shared", "b"])
    router.add_provider(first)
    router.add_provider(second)
    assert [t.name for t in router.visible_tools(caller("c1"))] == ["shared", "a", "b"]
    result = await router.call_tool(caller("c1"), "shared", {}, Exchange.internal())
    assert text(result) == "first:c1" and second.calls == []


async def test_an_unknown_tool_is_an_invalid_params_error_that_names_it() -> None:
    router = bare_router()
    router.add_provider(EchoProvider("p", ["a"]))
    with pytest.raises(UnknownTool) as raised:
        await router.call_tool(caller("c1"), "nope", {}, Exchange.internal())
    assert raised.value.code == types.INVALID_PARAMS and "'nope'" in raised.value.message


async def test_a_tool_its_provider_cannot_serve_now_is_an_error_result_saying_why() -> None:
    router = bare_router()
    router.add_provider(EchoProvider("p", [], gone={"old": "backend 'p' is restarting"}))
    result = await router.call_tool(caller("c1"), "old", {}, Exchange.internal())
    assert result.is_error and text(result) == "backend 'p' is restarting"


async def test_a_tool_the_catalogue_never_served_is_not_said_to_be_down_under_a_policy_it_cannot_ask() -> None:
    # The router judges a down tool on its backend as the catalogue last served it; without one, it tells nothing.
    router = bare_router()
    router.policy = RecordingPolicy(set())
    router.add_provider(EchoProvider("p", [], gone={"old": "backend 'p' is restarting"}))
    with pytest.raises(UnknownTool):
        await router.call_tool(caller("c1"), "old", {}, Exchange.internal())


# --- the policy hook ---------------------------------------------------------------------------------


async def test_the_policy_is_asked_with_the_caller_and_the_target_and_a_denial_answers_as_an_unknown_name() -> None:
    policy = RecordingPolicy({"secret"})
    router = bare_router()
    router.policy = policy
    provider = EchoProvider("vault", ["secret", "SECRET", "public"])
    router.add_provider(provider)
    with pytest.raises(Denied) as raised:
        await router.call_tool(caller("alice"), "secret", {}, Exchange.internal())
    with pytest.raises(UnknownTool) as unknown:
        await router.call_tool(caller("alice"), "Se-cret", {}, Exchange.internal())  # the same suggestions
    # No oracle: the refused caller is told what a name nothing serves gets, suggestions computed the same way.
    assert isinstance(raised.value, UnknownTool) and not isinstance(unknown.value, Denied)
    assert raised.value.error.model_dump() == {
        **unknown.value.error.model_dump(),
        "message": "Unknown tool: 'secret'; did you mean 'SECRET'?",
    }
    assert unknown.value.message == "Unknown tool: 'Se-cret'; did you mean 'SECRET'?"
    assert raised.value.meant == unknown.value.meant == ["SECRET"]
    # For the operator (audit, workflows): who, what and the policy's reason.
    assert raised.value.explanation == "not permitted: caller 'alice' may not use tool 'secret': not on the allow list"
    assert (raised.value.caller.id, raised.value.target.name) == ("alice", "secret")
    assert ("alice", Target("tool", "secret", "vault")) in policy.asked
    assert provider.calls == []  # refused before the provider ran
    assert text(await router.call_tool(caller("alice"), "public", {}, Exchange.internal())) == "vault:alice"


async def test_lists_show_each_caller_only_what_the_policy_permits() -> None:
    router = bare_router()
    router.policy = RecordingPolicy({"secret"})
    router.add_provider(EchoProvider("vault", ["secret", "public"]))
    assert [t.name for t in router.visible_tools(caller("alice"))] == ["public"]
    assert router.may_use(caller("alice"), ["secret", "public", "missing"]) == ["public"]


async def test_call_tool_and_find_tool_are_held_to_the_policy_of_the_tool_they_reach(tmp_path: Path) -> None:
    config = VmcpConfig.model_validate({"optimizer": {"enabled": True, "index_dir": str(tmp_path), "usage": False}})
    router = bare_router(config)
    router.policy = RecordingPolicy({"delete_everything"})
    optimizer = OptimizerFront(config)
    router.add_provider(optimizer)
    router.add_provider(EchoProvider("files", ["delete_everything", "delete_one_file"]))
    await optimizer.tools_changed(router.searchable_tools())
    try:
        refused = await router.call_tool(
            caller("bob"), "call_tool", {"tool_name": "delete_everything"}, Exchange.internal()
        )
        unknown = await router.call_tool(
            caller("bob"), "call_tool", {"tool_name": "delete_nothing"}, Exchange.internal()
        )
        assert refused.is_error and unknown.is_error  # call_tool's own answer for a name that does not exist
        assert text(refused) == text(unknown).replace("delete_nothing", "delete_everything"), text(refused)
        found = await router.call_tool(caller("bob"), "find_tool", {"query": "delete"}, Exchange.internal())
        assert found.structured_content is not None
        assert [t["name"] for t in found.structured_content["tools"]] == ["delete_one_file"]
    finally:
        optimizer.close()


# --- session choice per caller and the guarded send (a real backend process) ------------------------


@asynccontextmanager
async def demo_gateway_parts() -> AsyncIterator[tuple[Router, BackendManager, HealthMonitor]]:
    config = VmcpConfig.model_validate(
        {"backends": [{"name": "notes", "command": sys.executable, "args": [str(DEMO_SERVER)]}]}
    )
    backends = BackendManager(config)
    health = HealthMonitor(backends, config)
    catalog = LiveCatalog(backends, config.aggregation)
    sessions = SessionChooser(backends.ready, input_timeout=5, max_pending=4, spares=False)
    router = Router(catalog, backends, sessions, health.guarded)
    router.add_provider(BackendTools(catalog, ArgumentValidator()))
    async with anyio.create_task_group() as task_group:
        sessions.attach(task_group)
        await backends.start(task_group)
        catalog.set(catalog.build())
        try:
            yield router, backends, health
        finally:
            sessions.stop()
            backends.stop()


def a_front_request(method: str = "tools/call") -> Exchange:
    """An exchange with a front session stand-in: choosing a session only needs to know there is one."""
    return Exchange(method=method, session=object())  # type: ignore[arg-type]


async def test_each_caller_gets_the_session_its_client_needs() -> None:
    async with demo_gateway_parts() as (router, backends, _health):
        notes = backends.get("notes")
        assert notes is not None
        choose = router.sessions.choose
        anonymous = caller("anonymous:1", identified_by=Identification.ANONYMOUS, protocol_version=MODERN)
        assert isinstance(await choose(anonymous, a_front_request(), notes), SharedSession)
        plain = caller("session:plain", back_channel=True, lifetime=CallerLifetime())
        assert isinstance(await choose(plain, a_front_request(), notes), SharedSession)
        modern_sampler = caller(
            "credential:1", identified_by=Identification.CREDENTIAL, protocol_version=MODERN, capabilities=SAMPLING
        )
        assert isinstance(await choose(modern_sampler, a_front_request(), notes), RoundTripSession)

        one_life, two_life = CallerLifetime(), CallerLifetime()
        one = caller("session:one", capabilities=SAMPLING, back_channel=True, lifetime=one_life)
        two = caller("session:two", capabilities=SAMPLING, back_channel=True, lifetime=two_life)
        first, again, other = (
            await choose(one, a_front_request(), notes),
            await choose(one, a_front_request(), notes),
            await choose(two, a_front_request(), notes),
        )
        assert (
            isinstance(first, CallerSession) and isinstance(again, CallerSession) and isinstance(other, CallerSession)
        )
        assert first.session is again.session  # the same caller keeps its session
        assert first.session is not other.session  # another caller never shares it
        assert router.sessions.dedicated_sessions() == 2
        await one_life.end()  # the client's connection closed: its sessions go with it
        assert first.session.closed and not other.session.closed
        assert router.sessions.dedicated_sessions() == 1


async def test_every_send_goes_through_the_backends_guard_and_an_open_circuit_refuses_at_once() -> None:
    async with demo_gateway_parts() as (router, _backends, health):
        guarded: list[str] = []

        def recording_guard(backend: str, clock: CallClock | None) -> AbstractAsyncContextManager[None]:
            guarded.append(backend)
            return health.guarded(backend, clock)

        router.guard = recording_guard
        who = caller("session:one")
        result = await router.call_tool(who, "notes_save_note", {"title": "t", "text": "x"}, Exchange.internal())
        assert not result.is_error and guarded == ["notes"]

        breaker = health.breakers["notes"]
        for _ in range(breaker.config.failure_threshold):
            breaker.record_failure("test: the backend is failing", admitted=False)
        refused = await router.call_tool(who, "notes_save_note", {"title": "t", "text": "x"}, Exchange.internal())
        assert refused.is_error and "circuit" in text(refused).lower()
        assert guarded == ["notes", "notes"]


async def test_health_checks_stopped_before_they_start_do_not_start() -> None:
    # A stop as the gateway starts (a signal in its first moments) can come before the health task has run at
    # all: that task then found no scope to cancel, checked for ever, and the gateway's shutdown waited on it.
    async with demo_gateway_parts() as (_, _, health):
        health.stop()
        with anyio.fail_after(60):  # a guard against the hang, not a measure of speed
            await health.run()
