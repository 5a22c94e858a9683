"""A list change is told to a client only when the list *it* would get changed: a change of what the policy
hides from it is not hinted at (an oracle: the caller learned that hidden backends change, and a busy hidden
backend woke every listener).

A real `vmcp serve` behind API keys and a Cedar policy hiding the backend `hidden` from the guest, two real
stdio backends whose tools, prompts and resources a test rewrites and then announces (the tool `relist`), and
real SDK clients: the guest and the staff, each with a 2026-07-28 `subscriptions/listen` stream.

No timing: a hidden change is made and seen on the staff's stream first (so it is out of the gateway before the
next change), then a change the guest can see, of another list; events of one stream keep their order, so the
guest's next event is the visible change's only when the hidden one was not told to it.

A 2025-11-25 session is told by server/handlers.py's `ListChangedNotifier`, which asks the same `ListViews`
(server/listen.py) for the view it took at the session's start: the session hears of no hidden change, of any
of the three lists, whether or not it listed them, and hears of a changed description of a tool it sees. Its
list_changed come on its GET stream, which its client opens after the handshake (a change told before that is
lost): each such test first makes visible changes until one is heard (`_hearing`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import Subscription
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ServerEvent, ToolsListChanged

from tests.support import Gateway, bearer_client, policed_config, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MODERN = "2026-07-28"
POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action, resource in Backend::"hidden");
"""

BACKEND = """
import json, sys
from pathlib import Path
import anyio
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

SPEC, NAME = Path(sys.argv[1]), sys.argv[2]
BUS = InMemorySubscriptionBus()
SCHEMA = {"type": "object"}


def spec():
    return json.loads(SPEC.read_text())


async def list_tools(ctx, params):
    tools = [("relist", "announce a change"), *spec()["tools"].items()]
    return types.ListToolsResult(tools=[types.Tool(name=n, description=d, input_schema=SCHEMA) for n, d in tools])


async def call_tool(ctx, params):
    if params.name == "relist":
        await BUS.publish(ToolsListChanged())  # the gateway then fetches all three lists again
    return types.CallToolResult(content=[types.TextContent(type="text", text=params.name)])


async def list_prompts(ctx, params):
    return types.ListPromptsResult(prompts=[types.Prompt(name=n) for n in spec()["prompts"]])


async def get_prompt(ctx, params):
    return types.GetPromptResult(messages=[])


async def list_resources(ctx, params):
    return types.ListResourcesResult(resources=[types.Resource(uri=u, name=u) for u in spec()["resources"]])


async def read_resource(ctx, params):
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, text="r")])


async def main():
    server = Server(
        NAME, on_list_tools=list_tools, on_call_tool=call_tool, on_list_prompts=list_prompts,
        on_get_prompt=get_prompt, on_list_resources=list_resources, on_read_resource=read_resource,
        on_subscriptions_listen=ListenHandler(BUS),
    )
    options = server.create_initialization_options(
        NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
    )
    async with stdio_server() as (read, write):
        await server.run(read, write, options)

anyio.run(main)
"""


class Backend:
    """One backend's lists, as the test rewrites them (`relist` makes the gateway read them again)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.spec = directory / f"{name}.json"
        # Served as `<name>_t1` and `<name>_p1` (prefixed), and `<name>://r1` (URIs are never renamed).
        self.lists: dict[str, Any] = {"tools": {"t1": "one"}, "prompts": ["p1"], "resources": [f"{name}://r1"]}
        self._write()

    def _write(self) -> None:
        self.spec.write_text(json.dumps(self.lists))

    def add(self, kind: str, item: str) -> None:
        if kind == "tools":
            self.lists["tools"][item] = "new"
        else:
            self.lists[kind].append(item)
        self._write()

    def describe(self, tool: str, description: str) -> None:
        self.lists["tools"][tool] = description
        self._write()

    def entry(self, script: Path) -> dict[str, Any]:
        return {"name": self.name, "command": sys.executable, "args": [str(script), str(self.spec), self.name]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _gateway(directory: Path, optimizer: bool) -> Iterator[tuple[Gateway, dict[str, str], Backend, Backend]]:
    script = directory / "backend.py"
    script.write_text(BACKEND)
    shown, hidden = Backend(directory, "shown"), Backend(directory, "hidden")
    config = {
        "backends": [shown.entry(script), hidden.entry(script)],
        "optimizer": {"enabled": optimizer, "index_dir": str(directory / "index")},
        "limits": {"list_changed_interval": 0.05},
        "health": {"interval": 600},
    }
    path, keys = policed_config(directory, {"guest": ["guest"], "staff": ["staff"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys, shown, hidden


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Backend, Backend]]:
    yield from _gateway(tmp_path_factory.mktemp("listen-filtered26"), optimizer=False)


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Backend, Backend]]:
    yield from _gateway(tmp_path_factory.mktemp("listen-filtered26-opt"), optimizer=True)


async def _next(subscription: Subscription) -> ServerEvent:
    with anyio.fail_after(30):
        return await subscription.__anext__()


async def _relist(staff: Client, backend: Backend, optimizer: bool) -> None:
    if optimizer:
        await staff.call_tool("call_tool", {"tool_name": f"{backend.name}_relist", "arguments": {}})
    else:
        await staff.call_tool(f"{backend.name}_relist", {})


def _listening(client: Client) -> AbstractAsyncContextManager[Subscription]:
    return client.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True)


# (the list the hidden backend changes, the event it is; the list then changed where the guest sees it, its event)
PHASES: list[tuple[str, type[ServerEvent], str, type[ServerEvent]]] = [
    ("tools", ToolsListChanged, "prompts", PromptsListChanged),
    ("prompts", PromptsListChanged, "resources", ResourcesListChanged),
    ("resources", ResourcesListChanged, "tools", ToolsListChanged),
]
ITEMS = {"tools": "t{1}", "prompts": "p{1}", "resources": "{0}://r{1}"}


async def test_a_listener_hears_only_changes_of_the_lists_the_policy_lets_it_see(
    gateway: tuple[Gateway, dict[str, str], Backend, Backend],
) -> None:
    running, keys, shown, hidden = gateway
    async with (
        bearer_client(running.url, keys["guest"], MODERN) as guest,
        bearer_client(running.url, keys["staff"], MODERN) as staff,
        _listening(guest) as guest_events,
        _listening(staff) as staff_events,
    ):
        for n, (hidden_kind, hidden_event, shown_kind, shown_event) in enumerate(PHASES, start=2):
            hidden.add(hidden_kind, ITEMS[hidden_kind].format("hidden", n))
            await _relist(staff, hidden, optimizer=False)
            assert isinstance(await _next(staff_events), hidden_event)  # the staff sees that backend
            shown.add(shown_kind, ITEMS[shown_kind].format("shown", n))
            await _relist(staff, shown, optimizer=False)
            assert isinstance(await _next(staff_events), shown_event)
            told = await _next(guest_events)
            assert isinstance(told, shown_event), f"the guest was told of a hidden {hidden_kind} change: {told}"
        # A tool the guest sees changes only its description: its list changed (not only the names count).
        shown.describe("t1", "one, said otherwise")
        await _relist(staff, shown, optimizer=False)
        assert isinstance(await _next(staff_events), ToolsListChanged)
        assert isinstance(await _next(guest_events), ToolsListChanged)
        # Hidden again, then visible: the guest's lists are what it was told they are.
        tools = {tool.name for tool in (await guest.list_tools()).tools}
        assert "shown_t4" in tools and not any(name.startswith("hidden_") for name in tools)


@asynccontextmanager
async def _legacy_guest(running: Gateway, key: str) -> AsyncIterator[tuple[Client, MemoryObjectReceiveStream[str]]]:
    """A 2025-11-25 session of the guest, and the lists its list_changed notifications name, in order."""
    heard, hearing = anyio.create_memory_object_stream[str](64)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.Notification) and message.method.endswith("/list_changed"):
            await heard.send(message.method.split("/")[1])

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    legacy = Client(streamable_http_client(running.url, http_client=http), mode="legacy", message_handler=on_message)  # type: ignore[arg-type]
    async with http, legacy as guest, hearing:
        yield guest, hearing


async def _hearing(
    hearing: MemoryObjectReceiveStream[str], staff: Client, staff_events: Subscription, shown: Backend, tag: str
) -> None:
    """Once this returns the guest's session hears list changes: a visible resources change at a time, until the
    guest is told one. Each is out of the gateway (the staff heard it) before the guest's silence is judged, and a
    list_changed not sent within `LIST_CHANGED_SEND_WAIT` (2 s) is dropped: a wait of 10 s cannot end before it."""
    for attempt in range(10):
        shown.add("resources", f"shown://{tag}-{attempt}")
        await _relist(staff, shown, optimizer=False)
        assert isinstance(await _next(staff_events), ResourcesListChanged)
        with anyio.move_on_after(10):
            assert await hearing.receive() == "resources"
            return
    raise AssertionError("the guest's session was told no list change")


async def test_a_2025_11_25_session_hears_only_changes_of_the_lists_the_policy_lets_it_see(
    gateway: tuple[Gateway, dict[str, str], Backend, Backend],
) -> None:
    running, keys, shown, hidden = gateway
    async with (
        _legacy_guest(running, keys["guest"]) as (guest, hearing),
        bearer_client(running.url, keys["staff"], MODERN) as staff,
        _listening(staff) as staff_events,
    ):
        await guest.list_tools(), await guest.list_prompts(), await guest.list_resources()
        await _hearing(hearing, staff, staff_events, shown, "listed")
        for n, (hidden_kind, hidden_event, shown_kind, shown_event) in enumerate(PHASES, start=12):
            hidden.add(hidden_kind, ITEMS[hidden_kind].format("hidden", n))
            await _relist(staff, hidden, optimizer=False)
            assert isinstance(await _next(staff_events), hidden_event)
            shown.add(shown_kind, ITEMS[shown_kind].format("shown", n))
            await _relist(staff, shown, optimizer=False)
            assert isinstance(await _next(staff_events), shown_event)
            with anyio.fail_after(30):
                told = await hearing.receive()
            assert told == shown_kind, f"the guest was told of a hidden {hidden_kind} change: {told}"
        # A tool the guest sees changes only its description: its list changed (not only the names count).
        shown.describe("t1", "one, said a third way")
        await _relist(staff, shown, optimizer=False)
        assert isinstance(await _next(staff_events), ToolsListChanged)
        with anyio.fail_after(30):
            assert await hearing.receive() == "tools"


async def test_a_2025_11_25_session_that_never_listed_hears_no_hidden_change(
    gateway: tuple[Gateway, dict[str, str], Backend, Backend],
) -> None:
    """Its view is taken at its start, not at its first list: a hidden change is no news to it either."""
    running, keys, shown, hidden = gateway
    async with (
        _legacy_guest(running, keys["guest"]) as (_, hearing),
        bearer_client(running.url, keys["staff"], MODERN) as staff,
        _listening(staff) as staff_events,
    ):
        await _hearing(hearing, staff, staff_events, shown, "unlisted")
        hidden.add("prompts", "p20")
        await _relist(staff, hidden, optimizer=False)
        assert isinstance(await _next(staff_events), PromptsListChanged)
        shown.describe("t1", "one, said a fourth way")
        await _relist(staff, shown, optimizer=False)
        assert isinstance(await _next(staff_events), ToolsListChanged)
        with anyio.fail_after(30):
            told = await hearing.receive()
        assert told == "tools", f"the guest was told of a hidden prompts change: {told}"


async def test_with_the_optimizer_on_a_backends_tools_change_is_no_tools_list_change(
    optimized: tuple[Gateway, dict[str, str], Backend, Backend],
) -> None:
    """`tools/list` shows find_tool and call_tool: a backend's new tool (seen or hidden) changes no caller's
    list, and a hidden backend's resources are still not the guest's concern."""
    running, keys, shown, hidden = optimized
    async with (
        bearer_client(running.url, keys["guest"], MODERN) as guest,
        bearer_client(running.url, keys["staff"], MODERN) as staff,
        _listening(guest) as guest_events,
        _listening(staff) as staff_events,
    ):
        hidden.add("resources", "hidden://r9")
        await _relist(staff, hidden, optimizer=True)
        assert isinstance(await _next(staff_events), ResourcesListChanged)
        for backend in (hidden, shown):
            backend.add("tools", "t9")
            await _relist(staff, backend, optimizer=True)
        shown.add("prompts", "p9")
        await _relist(staff, shown, optimizer=True)
        assert isinstance(await _next(staff_events), PromptsListChanged)  # no tools list change before it
        told = await _next(guest_events)
        assert isinstance(told, PromptsListChanged), f"the guest was told of a change it cannot see: {told}"
        assert {tool.name for tool in (await guest.list_tools()).tools} == {"find_tool", "call_tool"}
