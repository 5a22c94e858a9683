"""A backend asking its client without end inside one call is bounded by the gateway.

One `vmcp serve` process fronts `examples/backends/chatty_asker.py` over stdio; its `ask_client` tool fires
many concurrent server-to-client requests inside one tool call. A real SDK client answers them: over the
client's stream (2025-11-25, `mode="legacy"`) or as `InputRequiredResult` rounds (2026-07-28). The client
never has more than `MAX_ASKS_IN_FLIGHT` open at once nor more than `MAX_ASKS_PER_CALL` in the call; the
backend gets a JSON-RPC error naming the bound for the rest, and its call still ends with a result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import EXAMPLES, Gateway, running_gateway, write_config
from vmcp_opt.backends.session_pool import MAX_ASKS_IN_FLIGHT, MAX_ASKS_PER_CALL

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

ASKER = EXAMPLES / "backends" / "chatty_asker.py"
FLOOD = 3 * MAX_ASKS_PER_CALL  # what the hostile call sends at once
REFUSAL = f"refused: the gateway relays at most {MAX_ASKS_PER_CALL} requests to the client per call"
OVERRUN_GRACE = 0.5  # seconds the first requests stay open, for a gateway past the bound to send more
WARNING = f"made more than {MAX_ASKS_PER_CALL} requests to the client"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "asker", "command": sys.executable, "args": [str(ASKER)], "roots": "relay"}],
        "aggregation": {"conflict_resolution": "priority"},  # the backend's own tool names
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("asks"), config)) as running:
        yield running


@dataclass
class Seen:
    """What the client's callback saw: requests in all, and the most open at once."""

    total: int = 0
    open: int = 0
    peak: int = 0

    def enter(self) -> None:
        self.total += 1
        self.open += 1
        self.peak = max(self.peak, self.open)


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _report(result: types.CallToolResult) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(_text(result))
    return report


def _sampled() -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="hi"), model="m")


def _warned_once(gateway: Gateway) -> None:
    # One line, however many requests were refused (and for later floods within the minute, none).
    assert gateway.output().count(WARNING) == 1, gateway.output()


def test_a_2025_client_gets_at_most_the_bound_at_once_and_per_call(gateway: Gateway) -> None:
    seen = Seen()
    full, over = anyio.Event(), anyio.Event()

    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        seen.enter()
        if seen.open >= MAX_ASKS_IN_FLIGHT:
            full.set()
        if seen.open > MAX_ASKS_IN_FLIGHT:
            over.set()
        # The first requests wait until as many as the bound are open at once: the gateway must send that many
        # (the backend sent them all together).
        with anyio.fail_after(20):
            await full.wait()
        if seen.total <= MAX_ASKS_IN_FLIGHT:
            # ... and then a moment more, for a gateway that sends past the bound to show it. A correct gateway
            # sends nothing more until one is answered, so the outcome does not depend on how long this is.
            with anyio.move_on_after(OVERRUN_GRACE):
                await over.wait()
        seen.open -= 1
        return _sampled()

    async def main() -> tuple[dict[str, Any], str, dict[str, Any]]:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            flood = _report(await client.call_tool("ask_client", {"kind": "sampling", "count": FLOOD}))
            echo = _text(await client.call_tool("echo", {"text": "still here"}))
            # The next call on the same session has an allowance of its own.
            again = _report(await client.call_tool("ask_client", {"kind": "sampling", "count": 3}))
            return flood, echo, again

    flood, echo, again = anyio.run(main)
    assert flood == {
        "answered": MAX_ASKS_PER_CALL,
        "refused": FLOOD - MAX_ASKS_PER_CALL,
        "errors": [f"sampling/createMessage {REFUSAL}"],
    }
    assert seen.peak == MAX_ASKS_IN_FLIGHT
    assert seen.total == MAX_ASKS_PER_CALL + 3
    assert echo == "still here"
    assert again == {"answered": 3, "refused": 0, "errors": []}
    _warned_once(gateway)


def test_a_backend_fanning_out_past_the_in_flight_bound_waits_and_is_answered(gateway: Gateway) -> None:
    seen = Seen()
    fan_out = MAX_ASKS_IN_FLIGHT + 4  # more than may be open at once, well within the per-call bound

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        seen.enter()
        await anyio.lowlevel.checkpoint()
        seen.open -= 1
        return types.ListRootsResult(roots=[])

    async def main() -> dict[str, Any]:
        async with Client(gateway.url, mode="legacy", list_roots_callback=list_roots) as client:
            return _report(await client.call_tool("ask_client", {"kind": "roots", "count": fan_out}))

    assert anyio.run(main) == {"answered": fan_out, "refused": 0, "errors": []}
    assert seen.total == fan_out
    assert seen.peak <= MAX_ASKS_IN_FLIGHT


def test_a_2026_client_gets_at_most_the_bound_per_round_and_per_call(gateway: Gateway) -> None:
    seen = Seen()

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        seen.enter()  # the SDK client answers a round's requests concurrently: `peak` is the largest round
        await anyio.lowlevel.checkpoint()
        seen.open -= 1
        return types.ListRootsResult(roots=[types.Root(uri="file:///work", name="work")])

    async def main() -> tuple[dict[str, Any], str]:
        # At most MAX_ASKS_IN_FLIGHT requests a round: the per-call bound takes more rounds than the SDK's default.
        async with Client(gateway.url, list_roots_callback=list_roots, input_required_max_rounds=1000) as client:
            assert client.protocol_version == "2026-07-28"
            flood = _report(await client.call_tool("ask_client", {"kind": "roots", "count": FLOOD}))
            echo = _text(await client.call_tool("echo", {"text": "still here"}))
            return flood, echo

    flood, echo = anyio.run(main)
    assert flood == {
        "answered": MAX_ASKS_PER_CALL,
        "refused": FLOOD - MAX_ASKS_PER_CALL,
        "errors": [f"roots/list {REFUSAL}"],
    }
    assert seen.total == MAX_ASKS_PER_CALL
    assert 1 <= seen.peak <= MAX_ASKS_IN_FLIGHT
    assert echo == "still here"
    _warned_once(gateway)
