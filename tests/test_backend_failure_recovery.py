"""Backends under failure, end to end: a real gateway process, real backend processes, the SDK client.

What tests/test_failure_recovery.py does not cover: a backend that is down when the gateway starts and comes
up later, and a backend whose calls hang while it keeps answering the health checks' pings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, free_port, http_demo_backend, running_gateway, write_config
from tests.test_failure_recovery import backend, eventually, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def listed(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.parametrize("sse", [False, True], ids=["streamable-http", "sse"])
async def test_a_backend_down_at_start_joins_the_catalogue_and_serves_once_it_comes_up(
    tmp_path: Path, sse: bool
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/sse" if sse else f"http://127.0.0.1:{port}/mcp"
    config = {
        "backends": [
            {"name": "late", "transport": "sse" if sse else "streamable-http", "url": url},
            demo_backend("local"),
        ],
        "health": {"interval": 0.2, "timeout": 1.0},
        # Checks of the backend while it is down open its circuit; a cool-down longer than the test must not
        # keep it refusing calls once the backend is up.
        "failure": {
            "circuit_breaker": {"failure_threshold": 1, "cooldown": 120.0},
            "restart": {"initial_delay": 0.2, "max_delay": 0.5},
        },
        "timeouts": {"connect": 5.0},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        await eventually(lambda: backend(gateway, "late")["circuit"]["state"] == "open", what="late's circuit open")
        async with Client(gateway.url) as client:
            assert "late_whoami" not in await listed(client)
            with http_demo_backend(port, sse=sse):
                await eventually(lambda: backend(gateway, "late")["state"] == "ready", what="late connected")
                with anyio.fail_after(60):  # a hang guard: listed at once on an idle machine
                    while "late_whoami" not in await listed(client):  # noqa: ASYNC110
                        await anyio.sleep(0.1)
                answer = await client.call_tool("late_whoami", {})
                assert not answer.is_error, text(answer)
                assert backend(gateway, "late")["circuit"]["state"] != "open"


async def test_a_backend_whose_calls_hang_while_it_answers_pings_opens_its_circuit(tmp_path: Path) -> None:
    """The demo server answers pings while `slow_echo` sleeps: every ping between two timed-out calls used to
    reset the count of consecutive failures, so the circuit never opened and every call waited its timeout."""
    config = {
        "backends": [demo_backend("stuck", call_timeout=1.0), demo_backend("bystander")],
        "health": {"interval": 0.1, "timeout": 1.0},
        "failure": {"circuit_breaker": {"failure_threshold": 2, "cooldown": 120.0}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(2):
                hung = await client.call_tool("stuck_slow_echo", {"message": "x", "seconds": 30})
                assert hung.is_error and "timed out after 1s" in text(hung), text(hung)
                await anyio.sleep(0.3)  # a few good pings in between
            assert backend(gateway, "stuck")["health"]["state"] == "healthy"
            # Refused by the open circuit, not sent: a call sent would end "timed out after 1s". (A bound on the
            # refusal's time, < 0.9 s, failed on a loaded machine and said nothing more than its message.)
            refused = await client.call_tool("stuck_slow_echo", {"message": "x", "seconds": 30})
            assert refused.is_error and "backend 'stuck'" in text(refused) and "circuit open" in text(refused)
            assert "timed out" not in text(refused), text(refused)
            assert not (await client.call_tool("bystander_slow_echo", {"message": "x", "seconds": 0})).is_error


# Answers every request with an error whose message is a megabyte of lines: what the handshake fails with.
REFUSING_SERVER = """\
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    if "id" in request:
        error = {"code": -32000, "message": "refused\\n" * 100_000}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}) + "\\n")
        sys.stdout.flush()
"""


async def test_a_huge_handshake_error_is_kept_and_logged_as_one_bounded_line(tmp_path: Path) -> None:
    server = tmp_path / "refusing_server.py"
    server.write_text(REFUSING_SERVER)
    config = {
        "backends": [{"name": "refuses", "command": sys.executable, "args": [str(server)]}, demo_backend("local")],
        "health": {"interval": 0.2},
        "failure": {"restart": {"initial_delay": 0.1, "max_delay": 0.2}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        await eventually(lambda: backend(gateway, "refuses")["restarts"] >= 3, what="three reconnection attempts")
        reason = backend(gateway, "refuses")["last_error"]
        assert reason.startswith("refused; refused; ") and "\n" not in reason and len(reason) < 1200, reason[:300]
        assert "characters)" in reason  # the cut says how long the whole was
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("local_slow_echo", {"message": "x", "seconds": 0})).is_error
    # Each attempt's warning, the health checks and the circuit quote the reason: a bounded line each time.
    assert len(gateway.output()) < 100_000


# Completes the handshake, then never answers tools/list.
SILENT_LISTER = """\
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    if request.get("method") == "server/discover":
        error = {"code": -32601, "message": "Method not found"}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}) + "\\n")
    elif request.get("method") == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "s", "version": "1"}}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\\n")
    sys.stdout.flush()
"""


async def test_a_backend_that_never_lists_is_said_to_hang_in_its_listing_not_its_connection(tmp_path: Path) -> None:
    server = tmp_path / "silent_lister.py"
    server.write_text(SILENT_LISTER)
    config = {
        "backends": [{"name": "silent", "command": sys.executable, "args": [str(server)]}, demo_backend("local")],
        "timeouts": {"connect": 1.0},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        await eventually(lambda: backend(gateway, "silent")["last_error"] is not None, what="a failed attempt")
        assert backend(gateway, "silent")["last_error"] == (
            "did not connect within 1s (no answer to tools/list, resources/list or prompts/list)"
        )
