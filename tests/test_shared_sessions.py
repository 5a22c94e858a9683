"""Any replica serves any 2025-11-25 session (`sessions.store: redis`): real replicas on one real Redis, a real
nginx round-robin in front of them without affinity, the real SDK client.

Which replica answered is read from the `Vmcp-Replica` header each answer carries (hostname:pid by default).
The replicas of a test start together (`running_gateways`), as replicas do, not one after the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.nginx_server import Nginx, running_nginx
from tests.redis_server import RedisServer, running_redis
from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    Gateway,
    demo_backend,
    raw_session,
    running_gateways,
    sse_messages,
    write_config,
)
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
# Raw requests wait this long for a gateway that is busy (two or three replicas on two cores, httpx's 5 s is tight).
RAW = httpx2.Client(timeout=60)


def replica_of(gateway: Gateway) -> str:
    return f"{socket.gethostname()}:{gateway.proc.pid}"


def shared_config(directory: Path, redis: RedisServer, **extra: Any) -> Path:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        **extra,
    }
    return write_config(directory, config)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@dataclass
class Pool:
    replicas: list[Gateway]
    nginx: Nginx


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Pool]:
    """Two replicas with the optimizer (find_tool), behind nginx."""
    directory = tmp_path_factory.mktemp("pool")
    path = shared_config(directory, redis, optimizer={"enabled": True})
    with (
        running_gateways(path, 2) as [first, second],
        running_nginx(directory / "nginx", [first.port, second.port]) as nginx,
    ):
        yield Pool([first, second], nginx)


@dataclass
class Served:
    """Which replica answered each tools/call and list of the session (by JSON-RPC id)."""

    replicas: dict[Any, str] = field(default_factory=dict)
    requests: dict[Any, dict[str, Any]] = field(default_factory=dict)

    async def hook(self, response: httpx2.Response) -> None:
        request = response.request
        if request.method != "POST" or not request.content:
            return
        body = json.loads(request.content)
        if isinstance(body, dict) and "id" in body and "method" in body:
            self.replicas[body["id"]] = response.headers.get("vmcp-replica", "?")
            self.requests[body["id"]] = body

    def by(self, method: str, tool: str | None = None) -> list[str]:
        return [
            self.replicas[i]
            for i, body in self.requests.items()
            if body["method"] == method and (tool is None or body.get("params", {}).get("name") == tool)
        ]


def session_client(url: str, served: Served) -> Client:
    http = httpx2.AsyncClient(timeout=60, event_hooks={"response": [served.hook]})
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


def test_a_session_alternates_replicas_for_list_find_and_call(pool: Pool) -> None:
    served = Served()

    async def main() -> list[str]:
        outcomes = []
        async with session_client(pool.nginx.url, served) as client:
            assert client.protocol_version == "2025-11-25"
            for _ in range(4):
                tools = await client.list_tools()
                outcomes.append(",".join(sorted(t.name for t in tools.tools)))
                found = await client.call_tool("find_tool", {"query": "simple text content", "limit": 3})
                assert found.structured_content is not None
                names = [tool["name"] for tool in found.structured_content["tools"]]
                outcomes.append("found" if "test_simple_text" in names else ",".join(names))
                called = await client.call_tool("call_tool", {"tool_name": "test_simple_text", "arguments": {}})
                outcomes.append("".join(c.text for c in called.content if isinstance(c, types.TextContent)))
        return outcomes

    outcomes = anyio.run(main)
    # Every answer is the same whichever replica gave it.
    assert outcomes[0::3] == [outcomes[0]] * 4 and "find_tool" in outcomes[0]
    assert outcomes[1::3] == ["found"] * 4
    assert outcomes[2::3] == ["This is a simple text response for testing."] * 4
    both = {replica_of(g) for g in pool.replicas}
    # Round-robin over two replicas with three kinds of request: each kind reached both replicas.
    assert set(served.by("tools/list")) == both
    assert set(served.by("tools/call", "find_tool")) == both
    assert set(served.by("tools/call", "call_tool")) == both
    assert any("restored a session opened on another replica" in g.output() for g in pool.replicas)


def test_an_sse_stream_cut_on_one_replica_is_resumed_on_another(pool: Pool) -> None:
    first, second = pool.replicas
    headers = raw_session(first.url)
    level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
    assert RAW.post(first.url, json=level, headers=headers).status_code == 200
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "test_tool_with_logging", "arguments": {}},
    }
    # The call's stream on the first replica is cut after its priming event: nothing else was read.
    with httpx2.stream("POST", first.url, json=call, headers=headers, timeout=30) as response:
        assert response.headers["vmcp-replica"] == replica_of(first)
        event_id, message = next(sse_messages(response.iter_lines()))
    assert event_id is not None and message is None

    resumed = {**headers, "last-event-id": event_id}
    got: list[dict[str, Any]] = []
    with httpx2.stream("GET", second.url, headers=resumed, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["vmcp-replica"] == replica_of(second)
        for _, message in sse_messages(response.iter_lines()):
            if message is not None:
                got.append(message)
            if message is not None and message.get("id") == 7:
                break
    logs = [m["params"]["data"] for m in got if m.get("method") == "notifications/message"]
    assert len(logs) == 3  # the three log messages the backend sent while the call ran
    assert got[-1]["result"]["content"][0]["type"] == "text"


def test_a_restored_session_keeps_its_log_level(pool: Pool) -> None:
    """The level set on the first replica is set again on the second's backend session when it restores the
    session: the backend's log messages during a call there reach the client."""
    first, second = pool.replicas
    headers = raw_session(first.url)
    level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "info"}}
    assert RAW.post(first.url, json=level, headers=headers).status_code == 200
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_tool_with_logging"}}
    answer = RAW.post(second.url, json={**call, "params": {**call["params"], "arguments": {}}}, headers=headers)
    messages = [m for _, m in sse_messages(iter([*answer.text.splitlines(), ""])) if m is not None]
    logs = [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]
    assert len(logs) == 3
    assert messages[-1]["result"]["content"][0]["text"] == "Tool with logging executed successfully"


def test_an_event_id_of_another_session_replays_nothing(pool: Pool) -> None:
    first, second = pool.replicas
    mine, theirs = raw_session(first.url), raw_session(first.url)
    # A call that sends progress is answered as an SSE stream, whose events have ids (a plain one is JSON).
    params = {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}}
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
    with httpx2.stream("POST", first.url, json=call, headers=theirs, timeout=30) as response:
        event_id, _ = next(sse_messages(response.iter_lines()))
    assert event_id is not None
    with httpx2.stream("GET", second.url, headers={**mine, "last-event-id": event_id}, timeout=30) as response:
        messages = [m for _, m in sse_messages(response.iter_lines()) if m is not None]
    assert messages == []


def test_a_session_deleted_on_one_replica_is_gone_on_every_replica(pool: Pool) -> None:
    first, second = pool.replicas
    headers = raw_session(first.url)
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert RAW.post(second.url, json=listing, headers=headers).status_code == 200  # restored on the second
    assert RAW.delete(second.url, headers=headers).status_code == 200
    for replica in (first, second):
        gone = RAW.post(replica.url, json=listing, headers=headers)
        assert gone.status_code == 404
        assert gone.json()["error"]["message"] == "Session not found"


def test_an_unknown_session_id_is_not_found_anywhere(pool: Pool) -> None:
    headers = {**RAW_HEADERS, "mcp-session-id": os.urandom(16).hex(), "mcp-protocol-version": "2025-11-25"}
    for replica in pool.replicas:
        response = RAW.post(replica.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
        assert response.status_code == 404


def test_restored_sessions_count_against_the_session_caps(tmp_path: Path, redis: RedisServer) -> None:
    path = shared_config(tmp_path, redis, limits={"max_sessions_per_address": 1})
    with running_gateways(path, 2) as [first, second]:
        on_first, on_second = raw_session(first.url), raw_session(second.url)
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        # The second replica already holds this address's one session: restoring the first's is refused.
        refused = RAW.post(second.url, json=listing, headers=on_first)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert RAW.delete(second.url, headers=on_second).status_code == 200
        # Its slot is free again: now the first replica's session is restored there.
        assert RAW.post(second.url, json=listing, headers=on_first).status_code == 200


def test_a_killed_replica_costs_only_the_calls_it_was_running(tmp_path: Path, redis: RedisServer) -> None:
    """Three replicas without the optimizer behind nginx; one SIGKILLed while it runs a long call and maybe
    some of a light load's short ones. Those calls end with an error; every other call succeeds, and the
    session carries on through the two replicas left."""
    path = shared_config(tmp_path, redis)
    with (
        running_gateways(path, 3) as gateways,  # started together: they need not wait for each other
        running_nginx(tmp_path / "nginx", [g.port for g in gateways]) as nginx,
    ):
        replicas = {replica_of(g): g for g in gateways}
        served = Served()
        started: set[float] = set()
        outcomes: dict[float, str] = {}  # by the call's unique `seconds`
        errors: dict[float, str] = {}
        at_risk: set[float] = set()  # unfinished at the kill, on the killed replica (or not yet answered)
        LONG = 600.0

        async def slow(client: Client, seconds: float) -> None:
            started.add(seconds)
            try:
                result = await client.call_tool("test_slow", {"seconds": seconds})
                outcomes[seconds] = "error" if result.is_error else "ok"
            except MCPError as exc:
                outcomes[seconds] = "error"
                errors[seconds] = exc.error.message

        def answered_by(seconds: float) -> str | None:
            for i, body in served.requests.items():
                if body.get("params", {}).get("arguments", {}).get("seconds") == seconds:
                    return served.replicas[i]
            return None

        async def worker(client: Client, n: int, stop: anyio.Event) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                await slow(client, 0.2 + n / 100 + i / 100_000)

        async def main() -> bool:
            with anyio.fail_after(180):  # a guard against hanging, not a measure
                async with session_client(nginx.url, served) as client:
                    stop = anyio.Event()
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(slow, client, LONG)  # it cannot finish by itself
                        for n in range(3):
                            tasks.start_soon(worker, client, n, stop)
                        while answered_by(LONG) is None or len(outcomes) < 6:  # noqa: ASYNC110 - watching the load
                            await anyio.sleep(0.05)
                        victim = answered_by(LONG)
                        at_risk.update(s for s in started - outcomes.keys() if answered_by(s) in (victim, None))
                        assert victim is not None
                        replicas[victim].proc.send_signal(signal.SIGKILL)
                        replicas[victim].proc.wait()
                        seen = len(outcomes)
                        while len(outcomes) < seen + 12:  # noqa: ASYNC110 - the load carries on after the kill
                            await anyio.sleep(0.05)
                        stop.set()
                    # The session itself carries on through the replicas left.
                    return (await client.call_tool("test_simple_text", {})).is_error is False

        assert anyio.run(main)
        failed = {s for s, outcome in outcomes.items() if outcome == "error"}
        assert outcomes[LONG] == "error"  # the long call ran on the killed replica: it failed, it did not hang
        # Resumed on a live replica, which saw the killed one's heartbeat end (or, killed before its first
        # event, the client's own end of the stream).
        assert "stopped before answering" in errors[LONG] or "SSE stream" in errors[LONG]
        assert failed <= at_risk  # no call failed that was not running on the killed replica
        assert started == set(outcomes)  # every call ended


def test_with_redis_gone_each_replica_serves_the_sessions_it_holds_and_shares_them_again_after(tmp_path: Path) -> None:
    with running_redis() as redis:
        # A grace no test run outlasts: the fallback to 404 is tests/test_shared_sessions_blip.py's.
        path = shared_config(tmp_path, redis, sessions={"store": "redis", "outage_grace_seconds": 600})
        with running_gateways(path, 2) as [first, second]:
            listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            both = raw_session(first.url)
            assert RAW.post(second.url, json=listing, headers=both).status_code == 200  # held by both now
            redis.stop()
            try:
                assert [RAW.post(g.url, json=listing, headers=both).status_code for g in (first, second)] == [
                    200,
                    200,
                ]
                alone = raw_session(first.url)  # opened while Redis is gone: this replica's only
                assert RAW.post(first.url, json=listing, headers=alone).status_code == 200
                # Not held there, and Redis may hold it: "retry", not "your session is gone".
                elsewhere = RAW.post(second.url, json=listing, headers=alone)
                assert elsewhere.status_code == 503 and elsewhere.headers["retry-after"] == "1", elsewhere.text
            finally:
                redis.start()
            # Redis is back, empty: a replica holding a session writes its record again at its next use (it
            # was not deleted), so both sessions are served by both replicas again.
            for headers in (both, alone):
                assert [RAW.post(g.url, json=listing, headers=headers).status_code for g in (first, second)] == [
                    200,
                    200,
                ]
            assert [g.output().count("sessions: Redis unreachable") for g in (first, second)] == [1, 1]


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    raise AssertionError("a 2026-07-28 client is asked through InputRequiredResult, not a request")


def modern_client(gateway: Gateway) -> Client:
    """A 2026-07-28 client that can answer sampling: a backend's sampling request reaches it as a round."""
    return Client(gateway.url, sampling_callback=_sampling)


async def open_round(client: Client, tool: str, arguments: dict[str, Any]) -> types.InputRequiredResult:
    """A 2026-07-28 client's first call of `tool`, answered with a round."""
    async with client:
        assert client.protocol_version == "2026-07-28"
        opened = await client.session.call_tool(tool, arguments, allow_input_required=True)
    assert isinstance(opened, types.InputRequiredResult) and opened.input_requests and opened.request_state
    return opened


async def answer_round(
    client: Client,
    tool: str,
    arguments: dict[str, Any],
    opened: types.InputRequiredResult,
    reply: types.CreateMessageResult | types.ElicitResult,
) -> types.CallToolResult | str:
    """The retry answering every question of `opened` with `reply`: the result, or the error as text."""
    assert opened.input_requests is not None
    async with client:
        try:
            done = await client.session.call_tool(
                tool,
                arguments,
                input_responses={key: reply for key in opened.input_requests},
                request_state=opened.request_state,
                allow_input_required=True,
            )
        except MCPError as exc:
            return f"{exc.error.code}: {exc.error.message}"
    assert isinstance(done, types.CallToolResult)
    return done


async def first_round(gateway: Gateway) -> types.InputRequiredResult:
    return await open_round(modern_client(gateway), "test_sampling", {"prompt": "q"})


async def retry(gateway: Gateway, opened: types.InputRequiredResult) -> str:
    answer = types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="x"), model="m")
    done = await answer_round(modern_client(gateway), "test_sampling", {"prompt": "q"}, opened, answer)
    return done if isinstance(done, str) else "".join(c.text for c in done.content if isinstance(c, types.TextContent))


@pytest.fixture
def keyed_pair(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas sealing request_state with one key."""
    path = shared_config(tmp_path, redis, request_state={"key_env": "VMCP_TEST_STATE_KEY"})
    env = {"VMCP_TEST_STATE_KEY": os.urandom(32).hex()}
    with running_gateways(path, 2, env=env) as [first, second]:
        yield first, second


def test_an_input_required_call_answered_on_another_replica_is_continued_by_its_own(
    keyed_pair: tuple[Gateway, Gateway],
) -> None:
    first, second = keyed_pair

    async def main() -> str:
        # The backend's sampling request waits in the first replica's memory; the answer lands on the second.
        return await retry(second, await first_round(first))

    assert anyio.run(main) == "LLM response: x"


def test_a_retry_whose_replica_was_killed_gets_a_clear_error(keyed_pair: tuple[Gateway, Gateway]) -> None:
    first, second = keyed_pair
    opened = anyio.run(first_round, first)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    outcome = anyio.run(retry, second, opened)
    assert outcome.startswith(f"{types.INVALID_PARAMS}: requestState names a call on replica {replica_of(first)}")
    assert "which has stopped; call again without requestState" in outcome


# --- every kind of round, relayed: a workflow's question and an approval answered on the other replica ---

ROUNDS_KEY, ROUNDS_KEY_HASH = new_key()
ROUNDS_POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
@approval("Saving writes to the team's shared notes.")
permit(principal, action == Action::"call_tool", resource == Tool::"notes_save_note");
"""
TITLED_ECHO = {
    "name": "titled_echo",
    "description": "Ask the user for a title, then echo it and tell which backend process did.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "steps": [
        {
            "id": "ask",
            "type": "elicitation",
            "message": "Title for '{{ params.text }}'?",
            "requested_schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
        },
        {
            "id": "echo",
            "tool": "notes_slow_echo",
            "depends_on": ["ask"],
            "arguments": {"message": "{{ steps.ask.output.content.title }}: {{ params.text }}", "seconds": 0},
        },
        {"id": "who", "tool": "notes_whoami", "depends_on": ["echo"]},
    ],
    "output": {"echoed": "{{ steps.echo.output.result }}", "pid": "{{ steps.who.output.pid }}"},
}


def rounds_pair_config(directory: Path, redis: RedisServer) -> Path:
    """Replicas sealing request_state with one key, with an elicitation workflow and an `@approval` policy."""
    (directory / "keys.json").write_text(
        json.dumps([{"sha256": ROUNDS_KEY_HASH, "subject": "alice", "groups": ["dev"]}])
    )
    (directory / "policy.cedar").write_text(ROUNDS_POLICY)
    config = {
        "backends": [demo_backend("notes")],
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        "request_state": {"key_env": "VMCP_TEST_STATE_KEY"},
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
        "workflows": [TITLED_ECHO],
    }
    return write_config(directory, config)


@contextlib.contextmanager
def running_rounds_pair(directory: Path, redis: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    path = rounds_pair_config(directory, redis)
    env = {"VMCP_TEST_STATE_KEY": os.urandom(32).hex()}
    with running_gateways(path, 2, env=env) as [first, second]:
        yield first, second


@pytest.fixture(scope="module")
def rounds_pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    with running_rounds_pair(tmp_path_factory.mktemp("rounds"), redis) as pair:
        yield pair


def alice(gateway: Gateway) -> Client:
    """A 2026-07-28 client that declares elicitation: the gateway's questions reach it as rounds."""

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        raise AssertionError("a 2026-07-28 client is asked through InputRequiredResult, not a request")

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {ROUNDS_KEY}"}, timeout=60)
    return Client(streamable_http_client(gateway.url, http_client=http), elicitation_callback=elicitation)


async def ask_round(gateway: Gateway, tool: str, arguments: dict[str, Any]) -> types.InputRequiredResult:
    return await open_round(alice(gateway), tool, arguments)


async def accept_round(
    gateway: Gateway, tool: str, arguments: dict[str, Any], opened: types.InputRequiredResult, answer: dict[str, Any]
) -> types.CallToolResult | str:
    reply = types.ElicitResult(action="accept", content=answer)
    return await answer_round(alice(gateway), tool, arguments, opened, reply)


def test_a_workflow_question_answered_on_another_replica_is_continued_by_the_run_on_its_own(
    rounds_pair: tuple[Gateway, Gateway],
) -> None:
    first, second = rounds_pair
    arguments = {"text": "hello"}

    async def main() -> types.CallToolResult | str:
        # The run waits in the first replica's memory for its step's answer; the answer lands on the second.
        opened = await ask_round(first, "titled_echo", arguments)
        assert opened.input_requests is not None
        [question] = opened.input_requests.values()
        assert isinstance(question, types.ElicitRequest) and question.params.message == "Title for 'hello'?"
        return await accept_round(second, "titled_echo", arguments, opened, {"title": "greeting"})

    done = anyio.run(main)
    assert isinstance(done, types.CallToolResult) and not done.is_error, done
    assert done.structured_content is not None and done.structured_content["echoed"] == "greeting: hello"
    # The steps after the answer ran where the run lives: a backend process the first replica started.
    backend = psutil.Process(int(done.structured_content["pid"]))
    assert first.proc.pid in [parent.pid for parent in backend.parents()]


def test_an_approval_answered_on_another_replica_runs_the_call_there_once(
    rounds_pair: tuple[Gateway, Gateway],
) -> None:
    first, second = rounds_pair
    arguments = {"title": "relayed-approval", "text": "x"}

    async def main() -> tuple[types.CallToolResult | str, types.CallToolResult | str, types.CallToolResult | str]:
        opened = await ask_round(first, "notes_save_note", arguments)
        assert opened.input_requests is not None
        [question] = opened.input_requests.values()
        assert isinstance(question, types.ElicitRequest) and "shared notes" in question.params.message
        approved = await accept_round(second, "notes_save_note", arguments, opened, {"approve": True})
        # The ticket was used up on the replica that handed it out: neither replica takes it again.
        again_there = await accept_round(first, "notes_save_note", arguments, opened, {"approve": True})
        again_here = await accept_round(second, "notes_save_note", arguments, opened, {"approve": True})
        return approved, again_there, again_here

    approved, again_there, again_here = anyio.run(main)
    assert isinstance(approved, types.CallToolResult) and not approved.is_error, approved
    assert "saved note 'relayed-approval' (1 characters)" in "".join(
        c.text for c in approved.content if isinstance(c, types.TextContent)
    )
    used = f"{types.INVALID_PARAMS}: this approval is for another call, or was already used"
    assert again_there == again_here == used
    # The replica that ran the call recorded the decision.
    assert "approval of notes_save_note for" in second.output() and "(alice): approved" in second.output()


def test_retries_of_every_kind_whose_replica_was_killed_get_a_clear_error(tmp_path: Path, redis: RedisServer) -> None:
    with running_rounds_pair(tmp_path, redis) as (first, second):

        async def ask_both() -> tuple[types.InputRequiredResult, types.InputRequiredResult]:
            return (
                await ask_round(first, "titled_echo", {"text": "t"}),
                await ask_round(first, "notes_save_note", {"title": "t", "text": "x"}),
            )

        workflow, approval = anyio.run(ask_both)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()

        async def retry_both() -> list[types.CallToolResult | str]:
            return [
                await accept_round(second, "titled_echo", {"text": "t"}, workflow, {"title": "x"}),
                await accept_round(second, "notes_save_note", {"title": "t", "text": "x"}, approval, {"approve": True}),
            ]

        gone = (
            f"{types.INVALID_PARAMS}: requestState names a call on replica {replica_of(first)}, which has stopped; "
            "call again without requestState"
        )
        assert anyio.run(retry_both) == [gone, gone]


def test_the_sdk_client_answers_workflow_and_approval_rounds_on_the_other_replica_through_round_robin(
    tmp_path: Path, rounds_pair: tuple[Gateway, Gateway]
) -> None:
    served = Served()

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if params.message == "Title for 'hello'?":
            return types.ElicitResult(action="accept", content={"title": "rr"})
        return types.ElicitResult(action="accept", content={"approve": True})  # the approval's question

    async def main() -> list[str]:
        outcomes = []
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {ROUNDS_KEY}"}, timeout=60, event_hooks={"response": [served.hook]}
        )
        transport = streamable_http_client(nginx.url, http_client=http)
        async with Client(transport, elicitation_callback=elicitation) as client:
            assert client.protocol_version == "2026-07-28"
            for n in range(3):
                echoed = await client.call_tool("titled_echo", {"text": "hello"})
                assert echoed.structured_content is not None, echoed
                outcomes.append(echoed.structured_content["echoed"])
                saved = await client.call_tool("notes_save_note", {"title": f"rr-{n}", "text": "x"})
                outcomes.append("".join(c.text for c in saved.content if isinstance(c, types.TextContent)))
        return outcomes

    with running_nginx(tmp_path / "nginx", [g.port for g in rounds_pair]) as nginx:
        outcomes = anyio.run(main)
    assert outcomes == [line for n in range(3) for line in ("rr: hello", f"saved note 'rr-{n}' (1 characters)")]
    # nginx alternates, and each retry comes right after the call that opened its round: every round was
    # opened on one replica and answered on the other.
    retries = [i for i, body in served.requests.items() if "requestState" in body["params"]]
    assert len(retries) == 6
    for i in retries:
        assert served.requests[i - 1]["params"]["name"] == served.requests[i]["params"]["name"]
        assert served.replicas[i - 1] != served.replicas[i]
