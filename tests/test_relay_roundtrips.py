"""Real clients through the real gateway: what a backend sends reaches the client that caused it.

One `vmcp serve` process fronts the conformance backend over stdio; the SDK's `mcp.Client` connects on
the 2025-11-25 handshake (`mode="legacy"`), the era with server-to-client requests. At the end, clients
on the 2026-07-28 revision (`Client`'s default), which have no back-channel, get the same requests as
`InputRequiredResult` rounds that the SDK client drives.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, write_config
from tests.test_conformance import http_conformance_backend

# Logging and resources/subscribe are what a 2025-11-25 client uses, though deprecated for 2026-07-28 ones.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
WATCHED = "test://watched-resource"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [
            {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "roots": "relay"}
        ],
        "aggregation": {"conflict_resolution": "priority"},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("relay"), config)) as running:
        yield running


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _backend_processes(gateway: Gateway) -> list[psutil.Process]:
    found = []
    for process in gateway.children():
        try:
            if any(str(CONFORMANCE_SERVER) in part for part in process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue  # reaped between the listing and the look: it is not running
    return found


def _settled_backend_processes(gateway: Gateway, timeout: float = 10.0) -> int:
    """The backend process count once earlier clients' own backend processes have been reaped."""
    deadline = time.monotonic() + timeout
    while len(_backend_processes(gateway)) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(_backend_processes(gateway))


def test_sampling_request_reaches_the_calling_client_and_its_answer_the_backend(gateway: Gateway) -> None:
    seen: list[types.CreateMessageRequestParams] = []

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        seen.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="forty-two"), model="test-model"
        )

    async def main() -> str:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            return _text(await client.call_tool("test_sampling", {"prompt": "the answer?"}))

    assert anyio.run(main) == "LLM response: forty-two"
    assert len(seen) == 1
    assert seen[0].max_tokens == 100
    content = seen[0].messages[0].content
    assert isinstance(content, types.TextContent) and content.text == "the answer?"


def test_elicitation_round_trip_keeps_the_schema_and_the_answer(gateway: Gateway) -> None:
    schemas: list[dict[str, Any]] = []

    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        schemas.append(params.requested_schema)
        return types.ElicitResult(action="accept", content={"untitledSingle": "option2"})

    async def main() -> str:
        async with Client(gateway.url, mode="legacy", elicitation_callback=elicitation) as client:
            return _text(await client.call_tool("test_elicitation_sep1330_enums", {}))

    text = anyio.run(main)
    assert text == 'Elicitation completed: action=accept, content={"untitledSingle": "option2"}'
    legacy = schemas[0]["properties"]["legacyEnum"]
    assert legacy["enumNames"] == ["Option One", "Option Two", "Option Three"]  # passed through unchanged


def test_backend_sees_only_the_capabilities_the_client_has(gateway: Gateway) -> None:
    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
        return types.ErrorData(code=types.INVALID_REQUEST, message="unused")

    async def main() -> tuple[types.CallToolResult, str]:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            elicit = await client.call_tool("test_elicitation", {"message": "name?"})
            try:
                await client.call_tool("test_roots", {})
            except MCPError as exc:
                return elicit, exc.error.message
            return elicit, "roots/list was answered"

    elicit, roots = anyio.run(main)
    assert elicit.is_error and _text(elicit) == "The client does not support elicitation"
    assert roots == "List roots not supported"  # the gateway claimed no roots for this client


def test_roots_request_is_answered_by_the_client(gateway: Gateway) -> None:
    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def main() -> str:
        async with Client(gateway.url, mode="legacy", list_roots_callback=list_roots) as client:
            return _text(await client.call_tool("test_roots", {}))

    assert anyio.run(main) == 'Roots: ["file:///work/project"]'


def test_progress_notifications_arrive_before_the_result(gateway: Gateway) -> None:
    events: list[tuple[str, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append(("progress", progress))

    async def main() -> None:
        async with Client(gateway.url, mode="legacy") as client:
            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            events.append(("result", -1))

    anyio.run(main)
    assert events == [("progress", 0), ("progress", 50), ("progress", 100), ("result", -1)]


def test_a_call_that_streams_nothing_is_answered_json_and_one_that_streams_as_sse(gateway: Gateway) -> None:
    """2025-11-25 POSTs: a plain JSON body unless the call sends something before its result."""
    answered: dict[str, str] = {}

    async def record(response: httpx2.Response) -> None:
        body = json.loads(response.request.content or b"{}")
        if body.get("method") == "tools/call":
            answered[body["params"]["name"]] = response.headers.get("content-type", "").split(";")[0]

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.append(progress)

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")

    progressed: list[float] = []

    async def main() -> list[str]:
        http = httpx2.AsyncClient(event_hooks={"response": [record]}, timeout=60)
        transport = streamable_http_client(gateway.url, http_client=http)
        async with Client(transport, mode="legacy", sampling_callback=sampling) as client:  # type: ignore[arg-type]
            return [
                _text(await client.call_tool("test_simple_text", {})),
                _text(await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)),
                _text(await client.call_tool("test_sampling", {"prompt": "?"})),
            ]

    texts = anyio.run(main)
    assert texts[0] and texts[2] == "LLM response: ok"
    assert progressed == [0, 50, 100]
    assert answered == {
        "test_simple_text": "application/json",
        "test_tool_with_progress": "text/event-stream",
        "test_sampling": "text/event-stream",
    }


def _events(body: str) -> list[tuple[str, str]]:
    """(id, data) of each SSE event in a body."""
    found = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "id" in fields:
            found.append((fields["id"], fields.get("data", "")))
    return found


def test_a_resumed_stream_replays_only_its_own_sessions_events(gateway: Gateway) -> None:
    """The SDK names a request's stream by its request id, the same in every session: resuming from an event of
    one's own must never replay another session's messages on the same id, nor may another session's event
    id be named."""
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}},
    }
    mine, theirs = raw_session(gateway.url), raw_session(gateway.url)
    own = _events(httpx2.post(gateway.url, json=call, headers=mine, timeout=60).text)
    other = _events(httpx2.post(gateway.url, json=call, headers=theirs, timeout=60).text)
    assert len(own) >= 4 and len(other) >= 4  # priming, three progress notifications, the result

    def resumed(headers: dict[str, str], last_event_id: str) -> list[tuple[str, str]]:
        """What a GET resuming from `last_event_id` replays before the stream goes quiet (its status if not 200)."""
        lines: list[str] = []
        with httpx2.stream(
            "GET", gateway.url, headers={**headers, "Last-Event-ID": last_event_id}, timeout=httpx2.Timeout(10, read=3)
        ) as response:
            if response.status_code != 200:
                return [("status", str(response.status_code))]
            with contextlib.suppress(httpx2.ReadTimeout):
                lines.extend(response.iter_lines())
        return _events("\n".join(lines))

    other_ids = {event_id for event_id, _ in other}
    replayed = resumed(mine, own[0][0])  # from its own priming event: its own progress and result
    replayed_ids = {event_id for event_id, _ in replayed}
    assert {event_id for event_id, _ in own[1:]} <= replayed_ids
    assert not other_ids & replayed_ids
    assert resumed(mine, other[0][0]) == [("status", "400")]  # another session's event id: not held for this one


def test_a_cancelled_call_is_cancelled_at_the_backend(gateway: Gateway) -> None:
    async def main() -> tuple[str, str]:
        async with Client(gateway.url, mode="legacy") as client:
            before = _text(await client.call_tool("test_cancelled_calls", {}))
            with anyio.move_on_after(0.5):
                await client.call_tool("test_slow", {"seconds": 30})
            after = before
            for _ in range(200):  # the backend learns of the cancellation asynchronously
                after = _text(await client.call_tool("test_cancelled_calls", {}))
                if after != before:
                    break
                await anyio.sleep(0.05)
            return before, after

    before, after = anyio.run(main)
    assert int(after) == int(before) + 1  # notifications/cancelled went client -> gateway -> backend


def test_log_messages_follow_the_clients_level(gateway: Gateway) -> None:
    received: list[tuple[str, str]] = []

    async def log(params: types.LoggingMessageNotificationParams) -> None:
        received.append((params.level, str(params.data)))

    async def main(level: types.LoggingLevel) -> None:
        async with Client(gateway.url, mode="legacy", logging_callback=log) as client:
            await client.set_logging_level(level)
            await client.call_tool("test_tool_with_logging", {})
            await anyio.sleep(0.2)

    anyio.run(main, "info")
    assert [text for _, text in received] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    received.clear()
    anyio.run(main, "warning")  # setLevel reached the backend: info messages are no longer sent
    assert received == []


@pytest.fixture(scope="module")
def http_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway in front of one conformance backend over HTTP: all its sessions share one state."""
    with http_conformance_backend() as url:
        config = {
            "backends": [{"name": "conformance", "transport": "streamable-http", "url": url}],
            "aggregation": {"conflict_resolution": "priority"},
        }
        with running_gateway(write_config(tmp_path_factory.mktemp("relay-http"), config)) as running:
            yield running


def test_resource_update_reaches_the_subscriber_and_no_one_else(http_gateway: Gateway) -> None:
    gateway = http_gateway
    updates: dict[str, list[str]] = {"subscriber": [], "bystander": []}
    arrived: dict[str, anyio.Event] = {}

    def handler(who: str) -> Any:
        async def on_message(message: IncomingMessage) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates[who].append(str(message.params.uri))
                arrived[who].set()

        return on_message

    async def main() -> tuple[str, str]:
        arrived.update(subscriber=anyio.Event(), bystander=anyio.Event())
        async with (
            Client(gateway.url, mode="legacy", message_handler=handler("subscriber")) as subscriber,
            Client(gateway.url, mode="legacy", message_handler=handler("bystander")) as bystander,
        ):
            await subscriber.subscribe_resource(WATCHED)
            first = _text(await bystander.call_tool("test_update_resource", {"uri": WATCHED}))
            with anyio.move_on_after(30):  # a hang guard: the wait ends when the update arrives
                await arrived["subscriber"].wait()
            await subscriber.unsubscribe_resource(WATCHED)
            second = _text(await bystander.call_tool("test_update_resource", {"uri": WATCHED}))
            await anyio.sleep(0.3)
            return first, second

    first, second = anyio.run(main)
    assert first == f"notified 1 subscriber(s) of {WATCHED}"
    assert second == f"notified 0 subscriber(s) of {WATCHED}"
    assert updates == {"subscriber": [WATCHED], "bystander": []}


def test_a_clients_backend_sessions_end_with_it(gateway: Gateway) -> None:
    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
        return types.ErrorData(code=types.INVALID_REQUEST, message="unused")

    before = _settled_backend_processes(gateway)
    assert before == 1  # the shared session's backend

    async def main() -> int:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            await client.call_tool("test_simple_text", {})
            return len(_backend_processes(gateway))

    during = anyio.run(main)
    assert during == before + 1  # this client's own backend process
    assert _settled_backend_processes(gateway) == before


def test_clients_without_back_channel_needs_share_the_backend_session(gateway: Gateway) -> None:
    before = _settled_backend_processes(gateway)

    async def main() -> tuple[str, int]:
        async with Client(gateway.url, mode="legacy") as client:
            text = _text(await client.call_tool("test_simple_text", {}))
            return text, len(_backend_processes(gateway))

    text, during = anyio.run(main)
    assert text == "This is a simple text response for testing."
    assert during == before


def test_a_list_change_on_a_clients_own_session_reaches_the_catalogue(http_gateway: Gateway) -> None:
    """A backend announces a change on the session that caused it: here the client's own, not the shared one."""
    gateway = http_gateway
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
        return types.ErrorData(code=types.INVALID_REQUEST, message="unused")

    async def main() -> tuple[str, set[str], set[str]]:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling, message_handler=on_message) as client:
            before = {tool.name for tool in (await client.list_tools()).tools}
            text = _text(await client.call_tool("test_add_tool", {}))
            with anyio.fail_after(30):
                await changed.wait()
            after = {tool.name for tool in (await client.list_tools()).tools}
            return text, before, after

    text, before, after = anyio.run(main)
    added = after - before
    assert text == f"now {len(before) + 1} tools" and len(added) == 1
    assert next(iter(added)).startswith("added_tool_")


# --- 2026-07-28 clients: what a backend asks reaches them as InputRequiredResult ------------------

INPUT_TIMEOUT = 3.5  # seconds a 2026-07-28 client has to come back with its answers
CALL_TIMEOUT = 1.5
DEADLINE = CALL_TIMEOUT + 1.0  # the gateway's last guard: the call timeout plus a second of grace


@pytest.fixture(scope="module")
def modern_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [
            {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "roots": "relay"}
        ],
        "aggregation": {"conflict_resolution": "priority"},
        "timeouts": {"input": INPUT_TIMEOUT, "call": CALL_TIMEOUT},
        # The tests run one call at a time; no spare sessions: a call's backend process comes and goes with it.
        "server": {"max_pending_calls": 1, "round_trip_spares": False},
        "health": {"interval": 600},  # one ping at start: none resets the breaker's counts during a test
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("relay-modern"), config)) as running:
        yield running


@pytest.fixture(scope="module")
def spare_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Spare backend sessions on (the default), for calls of 2026-07-28 clients.

    `timeouts.input` stays at its default (300 s): no test here is about it, and one holds a call's round while
    the other call's backend process starts, which takes seconds on a busy machine (with 3.5 s, the held round's
    `request_state` expired before it was answered)."""
    config = {
        "backends": [
            {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "roots": "relay"}
        ],
        "aggregation": {"conflict_resolution": "priority"},
        "server": {"max_pending_calls": 4},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("relay-spares"), config)) as running:
        yield running


async def _answer_sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="forty-two"), model="test-model"
    )


def _modern(client: Client) -> None:
    assert client.protocol_version == "2026-07-28"  # the round trips below are InputRequiredResult ones


def test_a_2026_client_answers_a_backends_sampling_request(modern_gateway: Gateway) -> None:
    seen: list[types.CreateMessageRequestParams] = []

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        seen.append(params)
        return await _answer_sampling(context, params)

    async def main() -> str:
        async with Client(modern_gateway.url, sampling_callback=sampling) as client:
            _modern(client)
            return _text(await client.call_tool("test_sampling", {"prompt": "the answer?"}))

    assert anyio.run(main) == "LLM response: forty-two"
    assert len(seen) == 1 and seen[0].max_tokens == 100
    content = seen[0].messages[0].content
    assert isinstance(content, types.TextContent) and content.text == "the answer?"


def test_a_2026_client_answers_form_elicitations_with_their_defaults_and_enums(modern_gateway: Gateway) -> None:
    schemas: list[dict[str, Any]] = []

    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        schemas.append(params.requested_schema)
        properties = params.requested_schema["properties"]
        if "untitledSingle" in properties:
            return types.ElicitResult(action="accept", content={"untitledSingle": "option2"})
        defaults = {name: field["default"] for name, field in properties.items()}
        return types.ElicitResult(action="accept", content={**defaults, "name": "Jane Roe"})

    async def main() -> tuple[str, str]:
        async with Client(modern_gateway.url, elicitation_callback=elicitation) as client:
            _modern(client)
            defaults = _text(await client.call_tool("test_elicitation_sep1034_defaults", {}))
            enums = _text(await client.call_tool("test_elicitation_sep1330_enums", {}))
            return defaults, enums

    defaults, enums = anyio.run(main)
    answered = {"name": "Jane Roe", "age": 30, "score": 95.5, "status": "active", "verified": True}
    assert defaults == f"Elicitation completed: action=accept, content={json.dumps(answered)}"
    assert enums == 'Elicitation completed: action=accept, content={"untitledSingle": "option2"}'
    assert schemas[0]["properties"]["age"] == {"type": "integer", "description": "User age", "default": 30}
    assert schemas[1]["properties"]["legacyEnum"]["enumNames"] == ["Option One", "Option Two", "Option Three"]


def test_a_2026_client_answers_a_url_elicitation(modern_gateway: Gateway) -> None:
    asked: list[types.ElicitRequestURLParams] = []

    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        asked.append(params)
        return types.ElicitResult(action="decline")

    async def main() -> str:
        async with Client(modern_gateway.url, elicitation_callback=elicitation) as client:
            return _text(await client.call_tool("test_elicitation_url", {}))

    assert anyio.run(main) == "URL elicitation completed: action=decline"
    assert asked[0].url == "https://example.com/authorize" and asked[0].message == "Please sign in"


async def _modern_roots_call(gateway: Gateway) -> str:
    """A 2026-07-28 client with one root calls the backend tool that lists the client's roots."""

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async with Client(gateway.url, list_roots_callback=list_roots) as client:
        _modern(client)
        return _text(await client.call_tool("test_roots", {}))


def test_a_2026_client_answers_a_roots_request(modern_gateway: Gateway) -> None:
    assert anyio.run(_modern_roots_call, modern_gateway) == 'Roots: ["file:///work/project"]'


def test_a_2026_client_without_sampling_gets_a_clear_error_and_the_backend_no_sampling_capability(
    modern_gateway: Gateway,
) -> None:
    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="cancel")

    async def main(**callbacks: Any) -> types.CallToolResult:
        async with Client(modern_gateway.url, **callbacks) as client:
            _modern(client)
            return await client.call_tool("test_sampling", {"prompt": "the answer?"})

    # Its own backend session (it declared elicitation) claims elicitation only; the shared one claims nothing.
    for result in (anyio.run(lambda: main(elicitation_callback=elicitation)), anyio.run(main)):
        assert result.is_error and _text(result) == "The client does not support sampling"


def test_the_backends_own_input_required_rounds_pass_through(modern_gateway: Gateway) -> None:
    async def main() -> tuple[str, str]:
        async with Client(modern_gateway.url) as client:
            _modern(client)
            first = await client.session.call_tool("test_input_required", {}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult) and first.request_state is not None
            final = _text(await client.call_tool("test_input_required", {}))  # the SDK drives the rounds
            return first.request_state, final

    state, final = anyio.run(main)
    assert "backend-step-1" not in state  # wrapped and sealed by the gateway, not the backend's own
    assert final == "resumed with request_state=backend-step-1"  # the retry reached the backend with its state


async def _first_round(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult) and result.input_requests and result.request_state
    return result


def _answers(first: types.InputRequiredResult) -> types.InputResponses:
    assert first.input_requests is not None
    answer = types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="x"), model="m")
    return {key: answer for key in first.input_requests}


def test_a_forged_or_finished_request_state_gets_a_clear_error(modern_gateway: Gateway) -> None:
    async def retry(client: Client, state: str, answers: types.InputResponses) -> str:
        try:
            await client.session.call_tool(
                "test_sampling",
                {"prompt": "q"},
                input_responses=answers,
                request_state=state,
                allow_input_required=True,
            )
        except MCPError as exc:
            return f"{exc.error.code}: {exc.error.message}"
        return "accepted"

    async def main() -> tuple[str, str, str, str]:
        async with Client(modern_gateway.url, sampling_callback=_answer_sampling) as client:
            first = await _first_round(client)
            assert first.request_state is not None
            answers = _answers(first)
            forged = await retry(client, first.request_state[:-4] + "AAAA", answers)
            garbage = await retry(client, "v1.bm90IGEgc3RhdGU", answers)
            done = await client.session.call_tool(
                "test_sampling",
                {"prompt": "q"},
                input_responses=answers,
                request_state=first.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult) and _text(done) == "LLM response: x"
            finished = await retry(client, first.request_state, answers)
            return forged, garbage, finished, _text(done)

    forged, garbage, finished, _ = anyio.run(main)
    assert forged == garbage == f"{types.INVALID_PARAMS}: Invalid or expired requestState"
    assert finished.startswith(f"{types.INVALID_PARAMS}: requestState names no pending call")


def test_calls_waiting_for_their_client_are_bounded(modern_gateway: Gateway) -> None:
    async def main() -> tuple[str, str]:
        async with Client(modern_gateway.url, sampling_callback=_answer_sampling) as client:
            first = await _first_round(client)  # waits for this client: the one pending call allowed
            try:
                await client.call_tool("test_sampling", {"prompt": "another"})
                refused = "accepted"
            except MCPError as exc:
                refused = exc.error.message
            done = await client.session.call_tool(
                "test_sampling",
                {"prompt": "q"},
                input_responses=_answers(first),
                request_state=first.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            return refused, _text(done)

    refused, done = anyio.run(main)
    assert refused.startswith(
        "the gateway already holds 1 calls waiting for their client's input (server.max_pending_calls)"
    )
    assert done == "LLM response: x"  # the waiting call was not disturbed


def test_a_client_that_does_not_come_back_loses_its_call_and_the_backend_session_goes(
    modern_gateway: Gateway,
) -> None:
    baseline = _settled_backend_processes(modern_gateway)

    async def main() -> tuple[int, str]:
        async with Client(modern_gateway.url, sampling_callback=_answer_sampling) as client:
            first = await _first_round(client)
            waiting = len(_backend_processes(modern_gateway))  # the call's own backend session is alive
            await anyio.sleep(INPUT_TIMEOUT + 0.5)
            assert first.request_state is not None
            try:
                await client.session.call_tool(
                    "test_sampling",
                    {"prompt": "q"},
                    input_responses=_answers(first),
                    request_state=first.request_state,
                    allow_input_required=True,
                )
            except MCPError as exc:
                return waiting, exc.error.message
            return waiting, "accepted"

    waiting, error = anyio.run(main)
    assert waiting == baseline + 1
    assert error == "Invalid or expired requestState"
    assert _settled_backend_processes(modern_gateway) == baseline  # cancelled at the backend and closed


def _circuit(gateway: Gateway) -> dict[str, Any]:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5).json()
    circuit: dict[str, Any] = body["backends"][0]["circuit"]
    return circuit


def test_calls_on_a_clients_own_backend_session_feed_the_circuit_breaker(modern_gateway: Gateway) -> None:
    failures_before = _circuit(modern_gateway)["consecutive_failures"]

    async def main(mode: str) -> types.CallToolResult:
        async with Client(modern_gateway.url, mode=mode, sampling_callback=_answer_sampling) as client:
            return await client.call_tool("test_slow", {"seconds": 30})

    legacy = anyio.run(main, "legacy")  # the client's own session (2025-11-25 back-channel)
    modern = anyio.run(main, "auto")  # the call's own session (2026-07-28 round trips)
    for result in (legacy, modern):
        assert (
            result.is_error
            and _text(result) == f"backend 'conformance' did not answer within {CALL_TIMEOUT:g}s (timeouts.call)"
        )
    assert _circuit(modern_gateway)["consecutive_failures"] == failures_before + 2


def test_a_client_answering_slower_than_the_call_timeout_is_not_a_slow_backend(modern_gateway: Gateway) -> None:
    async def thoughtful(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        await anyio.sleep(DEADLINE + 0.5)  # a person thinking: the call's deadline waits
        return await _answer_sampling(context, params)

    async def main() -> str:
        async with Client(modern_gateway.url, sampling_callback=thoughtful) as client:
            return _text(await client.call_tool("test_sampling", {"prompt": "take your time"}))

    assert anyio.run(main) == "LLM response: forty-two"
    assert _circuit(modern_gateway)["consecutive_failures"] == 0  # the breaker saw a success


# --- spare backend sessions: the next call's session is opened ahead -------------------------------

TAKEN = "a 2026-07-28 call took a spare session"
READY = "a spare session for 2026-07-28 calls is ready"
DROPPED = "a spare session was closed unused"


async def _echo_sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    content = params.messages[0].content
    assert isinstance(content, types.TextContent)
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"re: {content.text}"), model="test-model"
    )


def _logged(gateway: Gateway, line: str) -> int:
    """How many times the gateway logged `line` (its log lines wrap: whitespace is normalised)."""
    return " ".join(gateway.output().split()).count(line)


def _pids(gateway: Gateway) -> set[int]:
    return {process.pid for process in _backend_processes(gateway)}


def _wait_for(gateway: Gateway, line: str, count: int, timeout: float = 60.0) -> None:
    """Until `line` is logged `count` times; the deadline only guards against a hang (a spare is a process start)."""
    deadline = time.monotonic() + timeout
    while _logged(gateway, line) < count:
        assert time.monotonic() < deadline, f"{line!r} not logged {count} times:\n{gateway.output()}"
        time.sleep(0.05)


def _quiet(gateway: Gateway, line: str, still: float = 1.0, timeout: float = 15.0) -> int:
    """How many times `line` is logged once its count has not changed for `still` seconds."""
    deadline = time.monotonic() + timeout
    count, since = _logged(gateway, line), time.monotonic()
    while time.monotonic() - since < still and time.monotonic() < deadline:
        time.sleep(0.1)
        if (now := _logged(gateway, line)) != count:
            count, since = now, time.monotonic()
    return count


def _settle(gateway: Gateway, count: int, timeout: float = 10.0) -> set[int]:
    """The backend processes once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while len(pids := _pids(gateway)) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


async def _echo_call(gateway: Gateway, prompt: str) -> str:
    async with Client(gateway.url, sampling_callback=_echo_sampling) as client:
        _modern(client)
        return _text(await client.call_tool("test_sampling", {"prompt": prompt}))


def test_the_next_call_with_the_same_capabilities_takes_a_spare_session(spare_gateway: Gateway) -> None:
    gateway = spare_gateway
    shared = _settle(gateway, 1)  # the shared session's process: nothing extra before a round-trip call
    ready = _logged(gateway, READY)
    assert anyio.run(_echo_call, gateway, "one") == "LLM response: re: one"
    _wait_for(gateway, READY, ready + 1)  # opened after the first call with these capabilities
    spare = _settle(gateway, 2) - shared
    assert len(spare) == 1
    taken = _logged(gateway, TAKEN)

    assert anyio.run(_echo_call, gateway, "two") == "LLM response: re: two"  # relayed through the spare
    assert _logged(gateway, TAKEN) == taken + 1
    _wait_for(gateway, READY, ready + 2)  # its replacement
    after = _settle(gateway, 2)
    assert not spare & after  # the spare served the call and was closed with it, as any used session
    assert len(after - shared) == 1


def test_a_spare_session_serves_one_call_only(spare_gateway: Gateway) -> None:
    gateway = spare_gateway
    anyio.run(_echo_call, gateway, "warm up")  # a spare for these capabilities, if none yet
    _wait_for(gateway, READY, _logged(gateway, TAKEN) + 1)  # every spare taken so far, and one more
    taken = _logged(gateway, TAKEN)

    async def first_round(client: Client, prompt: str, rounds: dict[str, types.InputRequiredResult]) -> None:
        result = await client.session.call_tool("test_sampling", {"prompt": prompt}, allow_input_required=True)
        assert isinstance(result, types.InputRequiredResult)
        rounds[prompt] = result

    async def main() -> tuple[dict[str, str], dict[str, str], int]:
        async with (
            Client(gateway.url, sampling_callback=_echo_sampling) as a,
            Client(gateway.url, sampling_callback=_echo_sampling) as b,
        ):
            clients = {"A": a, "B": b}
            rounds: dict[str, types.InputRequiredResult] = {}
            # Two calls at once, both waiting for their client: the one on the spare is back first and its round
            # waits (within timeouts.input) while the other's backend process starts.
            async with anyio.create_task_group() as group:
                for prompt, client in clients.items():
                    group.start_soon(first_round, client, prompt, rounds)
            return await answer(clients, rounds)

    async def answer(
        clients: dict[str, Client], rounds: dict[str, types.InputRequiredResult]
    ) -> tuple[dict[str, str], dict[str, str], int]:
        asked: dict[str, str] = {}
        for prompt, result in rounds.items():
            assert result.input_requests is not None and len(result.input_requests) == 1
            request = next(iter(result.input_requests.values()))
            assert isinstance(request, types.CreateMessageRequest)
            content = request.params.messages[0].content
            assert isinstance(content, types.TextContent)
            asked[prompt] = content.text
        serving = len(_pids(gateway))
        answered: dict[str, str] = {}
        for prompt, result in rounds.items():
            assert result.input_requests is not None
            reply = types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=f"answer {prompt}"), model="m"
            )
            done = await clients[prompt].session.call_tool(
                "test_sampling",
                {"prompt": prompt},
                input_responses={key: reply for key in result.input_requests},
                request_state=result.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            answered[prompt] = _text(done)
        return asked, answered, serving

    asked, answered, serving = anyio.run(main)
    assert asked == {"A": "A", "B": "B"}  # each call's question came from its own backend session
    assert answered == {"A": "LLM response: answer A", "B": "LLM response: answer B"}
    assert _logged(gateway, TAKEN) == taken + 1  # one call took the spare, the other opened its own
    assert serving >= 3  # the shared session and one per call


def test_a_spare_whose_process_died_is_not_handed_out(spare_gateway: Gateway) -> None:
    gateway = spare_gateway
    anyio.run(_echo_call, gateway, "warm up")
    _wait_for(gateway, READY, _logged(gateway, TAKEN) + 1)
    shared = min(_backend_processes(gateway), key=lambda process: process.create_time()).pid  # started first
    spare = _settle(gateway, 2) - {shared}
    assert len(spare) == 1
    for process in _backend_processes(gateway):
        if process.pid in spare:
            process.kill()
    # The gateway drops the spare once its session ends (not when the next call finds it dead: a call made before
    # the gateway has read the end would race it).
    _wait_for(gateway, "a spare session was closed unused: its session ended", 1)
    taken = _logged(gateway, TAKEN)

    assert anyio.run(_echo_call, gateway, "still there?") == "LLM response: re: still there?"  # a new session
    assert _logged(gateway, TAKEN) == taken


def test_a_client_with_roots_gets_no_spare(spare_gateway: Gateway) -> None:
    # A spare would be asked for roots at initialisation (server-filesystem does) before any call owns it.
    # A call without roots first, so that a spare is started whatever ran before (the readiness line below exists).
    anyio.run(_echo_call, spare_gateway, "warm up")
    _wait_for(spare_gateway, READY, 1)
    for _ in range(2):
        assert "file:///work/project" in anyio.run(_modern_roots_call, spare_gateway)
    time.sleep(1.0)  # a spare, were one started, is ready well within this
    # Spares of other capability sets (earlier tests' replacements) may come in meanwhile: only roots count.
    ready_lines = [line for line in spare_gateway.output().splitlines() if READY in line]
    assert ready_lines and not [line for line in ready_lines if "roots" in line.split("capabilities:")[-1]]


def test_without_spares_nothing_is_opened_ahead(modern_gateway: Gateway) -> None:
    baseline = _settled_backend_processes(modern_gateway)
    for prompt in ("one", "two"):
        assert anyio.run(_echo_call, modern_gateway, prompt) == f"LLM response: re: {prompt}"
    assert _settled_backend_processes(modern_gateway) == baseline == 1
    assert "spare" not in modern_gateway.output()


@pytest.mark.skipif(not os.environ.get("VMCP_MEASURE_SPARES"), reason="a measurement: VMCP_MEASURE_SPARES=1")
def test_measure_round_trip_calls_with_and_without_spares(spare_gateway: Gateway, modern_gateway: Gateway) -> None:
    """Prints the median of 10 consecutive round-trip calls each way (1.5 s apart, and back to back)."""

    async def timed(gateway: Gateway, pause: float) -> list[float]:
        times = []
        async with Client(gateway.url, sampling_callback=_echo_sampling) as client:
            for n in range(10):
                await anyio.sleep(pause)
                start = time.perf_counter()
                assert _text(await client.call_tool("test_sampling", {"prompt": str(n)})) == f"LLM response: re: {n}"
                times.append(time.perf_counter() - start)
        return times

    for pause in (1.5, 0.0):
        for label, gateway in (("spares on", spare_gateway), ("spares off", modern_gateway)):
            times = anyio.run(timed, gateway, pause)
            print(
                f"\n{label}, {pause:g}s apart: p50 {statistics.median(times) * 1000:.0f} ms "
                f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
            )


def test_a_2026_clients_round_trip_call_gets_the_backends_log_messages_at_its_level(modern_gateway: Gateway) -> None:
    # The call runs on a per-call backend session (the client can answer sampling); its log messages go to
    # the request that waits on the call, filtered by the level the client put on the request.
    async def main(level: types.LoggingLevel) -> list[str]:
        received: list[str] = []

        async def log(params: types.LoggingMessageNotificationParams) -> None:
            received.append(str(params.data))

        async with Client(
            modern_gateway.url, sampling_callback=_echo_sampling, logging_callback=log, log_level=level
        ) as client:
            _modern(client)
            await client.call_tool("test_tool_with_logging", {})
            await anyio.sleep(0.2)
        return received

    assert anyio.run(main, "info") == ["Tool execution started", "Tool processing data", "Tool execution completed"]
    assert anyio.run(main, "warning") == []
