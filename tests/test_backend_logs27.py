"""A backend's log messages reach the client whose call they are for, on the backend's shared session.

A client that declares no sampling, elicitation or roots runs its calls on the backend's one shared session.
When it asked for log messages (a 2026-07-28 client's per-request `_meta` level, a 2025-11-25 client's
`logging/setLevel`), a streamable HTTP backend's messages sent on that call's own SSE stream go to it, at its
level, and never to another caller (backends/request_logs.py). A stdio backend's messages cannot be tied to a
call there, and are relayed to no one.

The backend is a small script written here: its one tool logs "<who> <level>" at three levels (a 2026-07-28
request only when its `_meta` asks, at that level, as the spec says), optionally waiting first until a given
number of calls are in flight together, so that concurrent callers' messages interleave on the shared session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, free_port, running_gateway, serving_mcp, write_config

BACKEND = """
import sys

import anyio
import mcp_types as types
from mcp.server.connection import allowed_log_levels
from mcp.server.lowlevel import Server

TOOL = types.Tool(
    name="chatty",
    description="Logs '<who> <level>' at debug, info and warning, once all `together` calls are in flight.",
    input_schema={
        "type": "object",
        "properties": {"who": {"type": "string"}, "together": {"type": "integer"}},
        "required": ["who"],
    },
)
arrived: dict[int, int] = {}  # per group size: calls that came since its last group was complete
everyone: dict[int, anyio.Event] = {}


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[TOOL])


async def call_tool(ctx, params):
    who = params.arguments["who"]
    together = int(params.arguments.get("together", 1))
    arrived[together] = arrived.get(together, 0) + 1
    here = everyone.setdefault(together, anyio.Event())
    if arrived[together] == together:
        here.set()
        del everyone[together], arrived[together]
    with anyio.fail_after(20):
        await here.wait()
    allowed = allowed_log_levels(ctx.protocol_version, ctx.meta)
    for level in ("debug", "info", "warning"):
        if level in allowed:
            message = types.LoggingMessageNotificationParams(level=level, data=f"{who} {level}", logger="chatty")
            notification = types.LoggingMessageNotification(params=message)
            await ctx.session.send_notification(notification, related_request_id=ctx.request_id)
            await anyio.sleep(0)
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"done {who}")])


server = Server("chatty", on_list_tools=list_tools, on_call_tool=call_tool)  # no logging/setLevel: no capability

if sys.argv[1:2] == ["--port"]:
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
else:
    from mcp.server.stdio import stdio_server

    async def main():
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
"""


TOOL = "chatty_chatty"  # the gateway's name for backend `chatty`'s tool `chatty`


def _backend_script(directory: Path) -> Path:
    script = directory / "chatty_backend.py"
    script.write_text(BACKEND)
    return script


@pytest.fixture(scope="module")
def http_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("logs27-http")
    port = free_port()
    with serving_mcp([sys.executable, str(_backend_script(directory)), "--port", str(port)], port) as url:
        config = {"backends": [{"name": "chatty", "transport": "streamable-http", "url": url}]}
        with running_gateway(write_config(directory, config)) as gateway:
            yield gateway


@pytest.fixture(scope="module")
def stdio_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("logs27-stdio")
    backend = {"name": "chatty", "command": sys.executable, "args": [str(_backend_script(directory))]}
    with running_gateway(write_config(directory, {"backends": [backend]})) as gateway:
        yield gateway


class Logs:
    """What one client's logging callback received, as '<who> <level>' texts."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._more = anyio.Event()

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        self.texts.append(str(params.data))
        self._more.set()
        self._more = anyio.Event()

    async def wait_for(self, count: int) -> list[str]:
        """The texts once `count` have come (a call's messages come on its stream, before its answer: this only
        waits for the client's callbacks to have run)."""
        with anyio.fail_after(30):
            while len(self.texts) < count:
                await self._more.wait()
        return self.texts


def _text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def test_a_2026_client_gets_its_calls_log_messages_at_its_level_from_an_http_backends_shared_session(
    http_gateway: Gateway,
) -> None:
    async def main() -> list[str]:
        logs = Logs()
        async with Client(http_gateway.url, logging_callback=logs, log_level="info") as client:
            assert client.protocol_version == "2026-07-28"
            assert _text(await client.call_tool(TOOL, {"who": "ann"})) == "done ann"
            return await logs.wait_for(2)

    assert anyio.run(main) == ["ann info", "ann warning"]


def test_a_2025_client_that_set_a_level_gets_its_calls_log_messages_from_an_http_backends_shared_session(
    http_gateway: Gateway,
) -> None:
    async def main() -> list[str]:
        logs = Logs()
        async with Client(http_gateway.url, mode="legacy", logging_callback=logs) as client:
            await client.set_logging_level("warning")
            assert _text(await client.call_tool(TOOL, {"who": "bob"})) == "done bob"
            return await logs.wait_for(1)

    assert anyio.run(main) == ["bob warning"]


def test_concurrent_callers_on_the_shared_session_get_only_their_own_calls_log_messages(
    http_gateway: Gateway,
) -> None:
    # Three calls in flight together on the backend's one shared session, their messages interleaved: each
    # client that asked gets its own call's alone, at its own level; the one that asked for none gets none.
    async def main() -> dict[str, list[str]]:
        modern, legacy, silent = Logs(), Logs(), Logs()
        async with (
            Client(http_gateway.url, logging_callback=modern, log_level="info") as ann,
            Client(http_gateway.url, mode="legacy", logging_callback=legacy) as bob,
            Client(http_gateway.url, logging_callback=silent) as cid,
        ):
            await bob.set_logging_level("debug")
            async with anyio.create_task_group() as calls:
                for client, who in ((ann, "ann"), (bob, "bob"), (cid, "cid")):
                    calls.start_soon(client.call_tool, TOOL, {"who": who, "together": 3})
            await modern.wait_for(2)
            await legacy.wait_for(3)
        return {"ann": modern.texts, "bob": legacy.texts, "cid": silent.texts}

    assert anyio.run(main) == {
        "ann": ["ann info", "ann warning"],
        "bob": ["bob debug", "bob info", "bob warning"],
        "cid": [],  # its calls' answers came after every message of theirs: nothing more can come
    }


def test_a_stdio_backends_log_messages_are_relayed_to_no_one_from_its_shared_session(
    stdio_gateway: Gateway,
) -> None:
    # One pipe carries every caller's messages and none names its request: they cannot be told apart.
    async def main() -> list[str]:
        logs = Logs()
        async with Client(stdio_gateway.url, logging_callback=logs, log_level="debug") as client:
            assert _text(await client.call_tool(TOOL, {"who": "dee"})) == "done dee"
            # A second call as a fence: its answer comes after anything the gateway relayed for the first.
            assert _text(await client.call_tool(TOOL, {"who": "eve"})) == "done eve"
        return logs.texts

    assert anyio.run(main) == []
