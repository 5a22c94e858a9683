"""An HTTP caller's requests in flight are bounded (`limits.requests_in_flight`), however it spends connections:
a 2025-11-25 call runs in its session, not in its POST, so a client that posts a slow call and closes the
connection leaves it running, and one session had 1,000 calls held at one backend at once while holding one
connection at a time. Past `per_caller` (or `total`) a request is answered at once with a JSON-RPC error naming
the bound. A real gateway process, a real stdio backend that counts its calls, HTTP by hand.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import RAW_HEADERS, RAW_INITIALIZE, api_keys_file, bearer_client, running_gateway, write_config
from tests.test_inflight23_stdio import arrivals, counting_backend


class Client:
    """A 2025-11-25 session from one source address, each request on a connection of its own."""

    def __init__(self, port: int, address: str) -> None:
        self.port = port
        self.address = address
        status, headers, _ = self.post(RAW_INITIALIZE, RAW_HEADERS)
        assert status == 200
        self.headers = {
            **RAW_HEADERS,
            "mcp-session-id": headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, self.headers)[0] == 202

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=(self.address, 0))

    def post(self, message: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        connection = self.connection()
        try:
            connection.request("POST", "/mcp", json.dumps(message), headers)
            response = connection.getresponse()
            body = response.read()
            answer = json.loads(body) if response.getheader("content-type") == "application/json" and body else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()

    def call(self, request_id: int, tool: str, arguments: dict[str, Any]) -> Any:
        params = {"name": tool, "arguments": arguments}
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        status, _, answer = self.post(message, self.headers)
        assert status == 200, status
        return answer

    def call_and_hang_up(self, request_id: int, gate: Path) -> None:
        """A held call whose connection closes once the backend has it: nothing of it stays open at the client."""
        reached = arrivals(gate) + 1
        params = {"name": "c_held", "arguments": {"gate": str(gate)}}
        connection = self.connection()
        connection.request(
            "POST",
            "/mcp",
            json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}),
            self.headers,
        )
        deadline = time.monotonic() + 60
        while arrivals(gate) < reached:
            assert time.monotonic() < deadline, "the call did not reach the backend in 60 s"
            time.sleep(0.02)
        connection.close()


@contextmanager
def gateway_with(tmp_path: Path, per_caller: int, total: int) -> Iterator[int]:
    limits = {"requests_in_flight": {"per_caller": per_caller, "total": total}}
    config = write_config(tmp_path, {"backends": [counting_backend(tmp_path)], "limits": limits})
    with running_gateway(config) as gateway:
        yield gateway.port


def refused_by(answer: Any) -> str:
    assert "error" in answer, answer
    return str(answer["error"]["data"]["limit"])


def test_a_caller_that_hung_up_is_served_again_while_its_calls_run_on(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with gateway_with(tmp_path, per_caller=3, total=100) as port:
        caller = Client(port, "127.0.0.1")
        for request_id in range(1, 4):
            caller.call_and_hang_up(request_id, gate)
        # A call whose client hung up runs on (2025-11-25: no cancel) as one of its caller's "left" calls, at most
        # per_caller of them (the oldest cancelled past that: tests/test_left_calls33.py), no longer one in flight:
        # the same caller, restarted in a new session, is served once the gateway has heard the hang-ups.
        again = Client(port, "127.0.0.1")
        deadline = time.monotonic() + 60
        while "error" in (answer := again.call(10, "c_most", {})):
            assert refused_by(answer) == "limits.requests_in_flight.per_caller"
            assert time.monotonic() < deadline, answer
            time.sleep(0.05)
        assert answer["result"]["structuredContent"]["result"] == 3  # the three run on at the backend
        assert arrivals(gate) == 3
        gate.touch()
        assert caller.call(12, "c_held", {"gate": str(gate)})["result"]["content"][0]["text"] == "released"


def test_callers_together_past_the_total_are_refused(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with gateway_with(tmp_path, per_caller=2, total=2) as port:
        first, second = Client(port, "127.0.0.1"), Client(port, "127.0.0.2")
        first.call_and_hang_up(1, gate)
        second.call_and_hang_up(1, gate)
        answer = Client(port, "127.0.0.3").call(1, "c_most", {})
        assert refused_by(answer) == "limits.requests_in_flight.total"
        gate.touch()


def test_a_verified_subject_is_one_caller_whatever_its_sessions_and_the_address_is_not_its_key(tmp_path: Path) -> None:
    # 2026-07-28 requests (no session): the bound is keyed by the verified subject, as rate limits are, so two
    # users behind one address (a proxy, a NAT) do not hold each other back, and one user's new clients buy nothing.
    gate = tmp_path / "gate"
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"], "bob": ["users"]})
    config = write_config(
        tmp_path,
        {
            "backends": [counting_backend(tmp_path)],
            "limits": {"requests_in_flight": {"per_caller": 2, "total": 100}},
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        },
    )

    async def main(url: str) -> None:
        async with anyio.create_task_group() as held:
            for _ in range(2):  # each from a client of its own
                held.start_soon(held_call, url, keys["alice"], gate)
            await anyio.to_thread.run_sync(reached, gate, 2)
            async with bearer_client(url, keys["alice"]) as alice:
                with pytest.raises(MCPError) as refused:
                    await alice.call_tool("c_most", {})
                assert refused.value.error.data["limit"] == "limits.requests_in_flight.per_caller"
            async with bearer_client(url, keys["bob"]) as bob:  # the same address, another subject
                served = await bob.call_tool("c_most", {})
                assert served.structured_content == {"result": 2}
            gate.touch()

    with running_gateway(config) as gateway:
        anyio.run(main, gateway.url)


async def held_call(url: str, credential: str, gate: Path) -> None:
    async with bearer_client(url, credential) as client:
        result = await client.call_tool("c_held", {"gate": str(gate)})
        assert result.content[0].text == "released"  # type: ignore[union-attr]


def reached(gate: Path, count: int) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang, not a measure
    while arrivals(gate) < count:
        assert time.monotonic() < deadline, f"{arrivals(gate)} of {count} calls reached the backend in 60 s"
        time.sleep(0.02)
