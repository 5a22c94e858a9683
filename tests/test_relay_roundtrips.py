"""Real clients through the real gateway: what a backend sends reaches the client that caused it.

One `vmcp serve` process fronts the conformance backend over stdio; the SDK's `mcp.Client` connects on
the 2025-11-25 handshake (`mode="legacy"`), the era with server-to-client requests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, running_gateway, write_config
from tests.test_conformance import http_conformance_backend

# Logging and resources/subscribe are what a 2025-11-25 client uses, though deprecated for 2026-07-28 ones.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
WATCHED = "test://watched-resource"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
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
            with anyio.move_on_after(5):
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
