"""A standalone GET stream resumed from events the store no longer holds is served afresh, in either store.

The GET stream carries the server's notifications (list_changed, resources/updated, logs). Its events are
bounded like every other (`sessions.max_events_per_session`); when the client resumes it from an event
dropped since, the gateway answered `400` (right for a request's stream: its result is lost), and the SDK's
client, refused twice, stopped listening for good: it never heard a notification again in that session.
The stores now mark the GET stream's event ids, and such a resumption gets a fresh GET stream (a `409`, as
for any second GET, while the session has one open). A request stream's id not held is still refused.

Real `vmcp serve` over the conformance and demo backends (the demo's `add_tool` changes its tool list), real
`redis-server` for the shared store; raw HTTP and the SDK's own client, their GET streams through a TCP relay
that cuts its connections as a dropped network would.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import demo_backend, raw_session, running_gateway, sse_messages, write_config
from tests.test_resume20_replay_ends import CONFORMANCE_SERVER, redis, streamed_call  # noqa: F401 - a fixture

WAIT = 15.0  # the longest any awaited event may take; a hang fails the test instead of blocking it
LIST_CHANGED = "notifications/tools/list_changed"
Event = tuple[str | None, dict[str, Any] | None]


def gateway_config(store: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backends": [
            {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]},
            demo_backend("notes"),  # its `add_tool` changes its tool list; the gateway tells every session
        ],
        "aggregation": {"conflict_resolution": "priority"},
        # Two events a session: a streamed call's five push out everything before them.
        "sessions": {"store": store, "max_events_per_session": 2},
    }
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis").url, "timeout": 1.0}
    return config


class Relay:
    """A TCP relay to a local port whose connections `cut` ends at once, as a dropped network (or a proxy
    restarting) would: the client's read ends, the server hears the connection close."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: list[socket.socket] = []
        self._severed: set[socket.socket] = set()  # the gateway's ends of connections cut half-open
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/mcp"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self._port))
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if sink not in self._severed:  # else swallowed, as a dead peer's network would
                    with contextlib.suppress(OSError):
                        sink.sendall(data)
        for end in (source, sink):
            if end not in self._severed:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self, half_open: bool = False) -> None:
        """Every connection ended; `half_open`: on the client's side only, the gateway's left open and never told
        (a laptop's sleep, a NAT's timeout), what it sends there swallowed."""
        with self._lock:
            ends, self._open = self._open, []
        clients = ends[0::2]
        if half_open:
            self._severed.update(ends)
        for end in clients if half_open else ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@contextlib.contextmanager
def relayed(port: int) -> Iterator[Relay]:
    relay = Relay(port)
    try:
        yield relay
    finally:
        relay.close()


def post(url: str, headers: dict[str, str], request_id: int, method: str, params: dict[str, Any]) -> httpx2.Response:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return httpx2.post(url, json=message, headers=headers, timeout=30)


def add_tool(url: str, headers: dict[str, str], request_id: int) -> None:
    """The backend's tool list changes: the gateway tells its sessions on their GET streams."""
    arguments = {"name": f"echo_{request_id}", "description": "Added at run time."}
    answer = post(url, headers, request_id, "tools/call", {"name": "add_tool", "arguments": arguments})
    assert answer.status_code == 200 and "error" not in answer.text, answer.text


class GetStream:
    """A GET stream read on a thread: its status, then its events as they come, until its connection ends."""

    def __init__(self, url: str, headers: dict[str, str], last_event_id: str | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self._status: queue.Queue[int] = queue.Queue()
        self._headers = {**headers, **({"last-event-id": last_event_id} if last_event_id else {})}
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        self.status = self._status.get(timeout=WAIT)

    def _read(self, url: str) -> None:
        timeout = httpx2.Timeout(30, read=None)
        with (
            contextlib.suppress(httpx2.HTTPError),
            httpx2.stream("GET", url, headers=self._headers, timeout=timeout) as response,
        ):
            self._status.put(response.status_code)
            for event in sse_messages(response.iter_lines()):
                self.events.put(event)

    def next_message(self) -> tuple[str | None, dict[str, Any]]:
        while True:
            event_id, message = self.events.get(timeout=WAIT)
            if message is not None:
                return event_id, message

    def ended(self) -> bool:
        self._thread.join(WAIT)
        return not self._thread.is_alive()


def get_status(url: str, headers: dict[str, str]) -> int:
    """The status a GET without `Last-Event-ID` is answered with (409: the session's GET stream is open)."""
    with httpx2.stream("GET", url, headers=headers, timeout=30) as response:
        return response.status_code


def resumed(url: str, headers: dict[str, str], last_event_id: str) -> GetStream:
    """A GET stream resumed from `last_event_id`, once the session's previous one has ended on the server (which
    hears of a closed connection a moment after it closed): until then a second GET stream is refused with 409."""
    deadline = time.monotonic() + WAIT
    while True:
        stream = GetStream(url, headers, last_event_id)
        if stream.status != 409 or time.monotonic() > deadline:
            return stream
        assert stream.ended()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_get_stream_resumed_from_dropped_events_is_served_and_hears_the_next_change(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with (
        running_gateway(write_config(tmp_path, gateway_config(store, request))) as gateway,
        relayed(gateway.port) as relay,
    ):
        url, headers = gateway.url, raw_session(gateway.url)
        first = GetStream(relay.url(), headers)
        assert first.status == 200
        add_tool(url, headers, 2)
        get_event_id, note = first.next_message()
        assert note["method"] == LIST_CHANGED and get_event_id is not None

        level = post(url, headers, 3, "logging/setLevel", {"level": "debug"})
        assert level.status_code == 200
        events = streamed_call(url, headers, 4)  # pushes the GET stream's event out of the session's two
        assert len(events) == 5 and events[-1][1] is not None and events[-1][1]["id"] == 4
        request_priming_id = events[0][0]
        assert request_priming_id is not None

        # A plain second GET stream is refused as the SDK refuses one; a resumption of the GET stream replaces the
        # one still registered (a connection the client abandoned whose end the gateway never heard).
        assert get_status(url, headers) == 409
        second = resumed(relay.url(), headers, get_event_id)
        assert second.status == 200
        assert first.ended()
        assert get_status(url, headers) == 409  # it is the session's GET stream now
        add_tool(url, headers, 5)
        event_id, note = second.next_message()
        assert note["method"] == LIST_CHANGED and event_id is not None
        relay.cut()
        assert second.ended()

        # A request's stream resumed from an event dropped: its result is lost, the client is told so. So is an id
        # without the GET stream's mark (every id before the mark was added) in memory, whatever stream it was of;
        # in Redis, an unmarked id names its stream's digest, so a GET stream's from a replica of the previous
        # version is still known for one.
        assert get_event_id.startswith("get-")
        unmarked = get_event_id.removeprefix("get-")
        for gone in (request_priming_id, unmarked) if store == "memory" else (request_priming_id,):
            refused = httpx2.get(url, headers={**headers, "last-event-id": gone}, timeout=30)
            assert refused.status_code == 400, (gone, refused.text)
            assert "result is lost" in refused.json()["error"]["message"]
        if store == "redis":
            third = resumed(relay.url(), headers, unmarked)
            assert third.status == 200
            relay.cut()
            assert third.ended()


class Heard:
    """The tools/list_changed notifications a client was sent."""

    def __init__(self) -> None:
        self.told = anyio.Event()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.told.set()

    async def a_change(self, client: Client, names: Iterator[str]) -> None:
        """Changes the tool list until the client hears of it: its GET stream may not be open yet (it opens
        after the handshake, and again a retry interval after a cut), and a change told meanwhile is missed."""
        self.told = anyio.Event()
        with anyio.fail_after(WAIT):
            while not self.told.is_set():
                await client.call_tool("add_tool", {"name": next(names), "description": "Added at run time."})
                with anyio.move_on_after(0.5):
                    await self.told.wait()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "half-open"])
def test_the_sdk_clients_get_stream_outlives_its_events_and_hears_the_next_change(
    store: str, half_open: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def scenario(url: str, relay: Relay) -> None:
        heard = Heard()
        names = (f"echo_{number}" for number in range(1000))
        http = httpx2.AsyncClient(timeout=30)
        client = Client(
            streamable_http_client(url, http_client=http),
            mode="legacy",
            message_handler=heard.on_message,
            log_level="debug",
        )
        async with client:
            await heard.a_change(client, names)  # the GET stream's event: the id it resumes from
            await client.call_tool("test_tool_with_logging", {})  # five events: the GET stream's one dropped
            relay.cut(half_open)  # the client resumes its GET stream from the event dropped
            await heard.a_change(client, names)

    with (
        running_gateway(write_config(tmp_path, gateway_config(store, request))) as gateway,
        relayed(gateway.port) as relay,
    ):
        anyio.run(scenario, relay.url(), relay)
