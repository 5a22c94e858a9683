"""A stopping replica behind a load balancer that never reads /readyz (nginx OSS), and one holding 2026-07-28 rounds.

- On SIGTERM a replica's port (sessions shared through Redis) refuses new connections and an idle keep-alive connection is closed, so the
  balancer's next connect fails and goes to another replica (nothing was sent: always safe to retry), while a
  call in flight still finishes and the process then exits 0. Before, the replica kept listening for the whole
  drain and nginx kept sending it new calls, one of them cut when the drain ran out.
- With rounds shared (`sessions.store: redis`), a 2026-07-28 call waiting for its client's answer holds the
  drain: the answer, sent to the other replica after the SIGTERM, is relayed to the stopping one, which
  continues the call and only then stops. Before, it logged "drained in 0.0s" and the answer failed ("which has
  stopped").

Real `vmcp serve` processes, real backends (held_server.py, the conformance server), a real Redis, the SDK client.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import socket
import subprocess
import sys
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

from tests.nginx_server import running_nginx
from tests.redis_server import running_redis
from tests.support import EXAMPLES, Gateway, api_keys_file, running_gateway, running_gateways, write_config

pytestmark = [pytest.mark.slow]

HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
DRAIN_TIMEOUT = 60.0  # far longer than any wait here: the drain ends because nothing is left, not by its bound
DEADLINE = 30.0  # a guard against hanging while polling, not a measure


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def _until_refused(gateway: Gateway) -> None:
    """Polls until a new connection to the gateway's port is refused, failing if the process exits first."""
    deadline = time.monotonic() + DEADLINE
    while not _refuses_connections(gateway.port):
        assert gateway.proc.poll() is None, f"the gateway exited before refusing connections:\n{gateway.output()}"
        assert time.monotonic() < deadline, f"still accepting connections {DEADLINE}s after SIGTERM"
        time.sleep(0.05)


def _kept_alive(port: int) -> socket.socket:
    """A connection that had one answer and stays open, idle (HTTP/1.1 keep-alive), as nginx keeps them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower(), head
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """Reads what is left of the `/healthz` answer, until the end of the stream (the peer closed) or `DEADLINE`."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=DRAIN_TIMEOUT + DEADLINE))


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_after_sigterm_the_port_refuses_connections_and_closes_idle_ones_while_a_call_finishes(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    # An idle connection is kept far longer than the test runs: only the drain can close it.
    settings = {"server": {"drain_timeout": DRAIN_TIMEOUT}, "limits": {"http_keep_alive_timeout": 600}}
    # A replica (sessions shared through Redis): a lone gateway keeps listening while it drains (tests/test_drain.py).
    replica: dict[str, Any] = {"sessions": {"store": "redis"}}

    async def main(gateway: Gateway) -> None:
        outcome: list[types.CallToolResult] = []

        async def held_call() -> None:
            async with Client(gateway.url) as client:
                await client.list_tools()  # for the result's schema check, before the drain
                outcome.append(await client.call_tool("held_held_echo", {"message": "finished", "gate": str(gate)}))

        idle = _kept_alive(gateway.port)
        with idle:
            async with anyio.create_task_group() as calls:
                calls.start_soon(held_call)
                with anyio.fail_after(DEADLINE):
                    while not await anyio.Path(f"{gate}.started").exists():  # noqa: ASYNC110 - the backend makes it
                        await anyio.sleep(0.05)
                gateway.proc.send_signal(signal.SIGTERM)

                await anyio.to_thread.run_sync(_until_refused, gateway)
                assert await anyio.to_thread.run_sync(_closed_by_peer, idle), "the idle connection stayed open"
                assert gateway.proc.poll() is None  # still serving the call in flight
                gate.touch()
        [result] = outcome
        assert not result.is_error and _text(result) == "finished"
        assert await _exit_code(gateway.proc) == 0

    with running_redis() as redis:
        replica["redis"] = {"url": redis.url}
        config = write_config(tmp_path, {"backends": [backend], **settings, **replica})
        with running_gateway(config) as gateway:
            anyio.run(main, gateway)
    log = gateway.output()
    assert "draining: /readyz fails, new sessions refused, port closed; 1 requests in flight" in log, log
    assert "drained in" in log and "still running after" not in log, log


@contextlib.contextmanager
def _replicas(directory: Path, server: Path = CONFORMANCE_SERVER) -> Iterator[tuple[list[Gateway], str]]:
    """Two replicas sharing a Redis, the backend `server` each; an API key of the caller."""
    keys = api_keys_file(directory / "keys.json", {"alice": ["team"]})
    with running_redis() as redis:
        config = {
            "backends": [
                {"name": server.stem.removesuffix("_server"), "command": sys.executable, "args": [str(server)]}
            ],
            "aggregation": {"conflict_resolution": "priority"},
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
            "redis": {"url": redis.url},
            "sessions": {"store": "redis"},
            "request_state": {"key_env": "VMCP_TEST_STATE_KEY"},
            "server": {"drain_timeout": DRAIN_TIMEOUT, "round_trip_spares": False},
        }
        env = {"VMCP_TEST_STATE_KEY": secrets.token_hex(32)}
        with running_gateways(write_config(directory, config), 2, env=env) as replicas:
            yield replicas, keys["alice"]


def _client(gateway: Gateway, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=DEADLINE)
    return Client(streamable_http_client(gateway.url, http_client=http), mode="2026-07-28", sampling_callback=_unused)


async def _unused(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    raise AssertionError("the test answers the rounds itself")


def test_a_round_waiting_for_its_client_holds_the_drain_and_its_answer_on_another_replica_completes_it(
    tmp_path: Path,
) -> None:
    with _replicas(tmp_path) as ([owner, other], key):

        async def main() -> str:
            async with _client(owner, key) as client:
                asked = await client.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult) and asked.input_requests, asked
            owner.proc.send_signal(signal.SIGTERM)  # no request in flight: only the round holds the drain
            await anyio.to_thread.run_sync(_until_refused, owner)
            # Still draining: the round holds it. (A drain that ignored the round logged this before its listener
            # closed, and the round was gone once the stop went on.)
            assert "drained in" not in owner.output(), owner.output()
            answer = types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text="x"), model="m"
            )
            async with _client(other, key) as client:  # the balancer's next choice: the owner refuses connections
                done = await client.session.call_tool(
                    "test_sampling",
                    {"prompt": "q"},
                    request_state=asked.request_state,
                    input_responses={request: answer for request in asked.input_requests},
                    allow_input_required=True,
                )
            assert isinstance(done, types.CallToolResult), done
            assert await _exit_code(owner.proc) == 0
            return _text(done)

        assert anyio.run(main) == "LLM response: x"
    log = owner.output()
    # The round is what the drain waits for. The client's last request (its session's close, sent as it left) may
    # still be finishing when the signal lands: counted or not, it does not hold the drain.
    assert re.search(r"\d+ requests in flight, 1 rounds waiting for their client", log), log
    assert "drained in" in log and "still running after" not in log, log


def test_behind_nginx_new_sessions_go_to_the_other_replica_while_one_drains(tmp_path: Path) -> None:
    """nginx round-robin, which never reads /readyz: while replica A drains a call, every new session opened through
    nginx is served (by B), none refused with a 503 the client does not retry."""
    gate = tmp_path / "gate"
    with (
        _replicas(tmp_path, HELD_SERVER) as ([draining, other], key),
        running_nginx(tmp_path / "nginx", [draining.port, other.port]) as nginx,
    ):
        headers = {"Authorization": f"Bearer {key}"}

        async def main() -> list[str]:
            served: list[str] = []

            async def held_call() -> None:
                async with _client(draining, key) as client:
                    await client.list_tools()
                    result = await client.call_tool(
                        "held_echo", {"message": "finished", "gate": str(gate)}
                    )  # unprefixed
                    assert _text(result) == "finished"

            async def new_session() -> None:
                http = httpx2.AsyncClient(headers=headers, timeout=DEADLINE)
                async with Client(streamable_http_client(nginx.url, http_client=http), mode="legacy") as client:
                    await client.list_tools()
                    served.append(client.protocol_version)

            async with anyio.create_task_group() as calls:
                calls.start_soon(held_call)
                with anyio.fail_after(DEADLINE):
                    while not await anyio.Path(f"{gate}.started").exists():  # noqa: ASYNC110 - the backend makes it
                        await anyio.sleep(0.05)
                draining.proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(DEADLINE):  # the drain has begun (and its port is closed in the same step)
                    while "draining:" not in draining.output():  # noqa: ASYNC110 - another process writes it
                        await anyio.sleep(0.05)
                for _ in range(4):  # round-robin: half of them would go to the draining replica
                    await new_session()
                assert draining.proc.poll() is None  # still draining the held call
                gate.touch()
            assert await _exit_code(draining.proc) == 0
            return served

        assert anyio.run(main) == ["2025-11-25"] * 4
