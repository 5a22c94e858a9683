"""A caller's own backend session (a client that declares sampling gets one) to a streamable HTTP backend that
hangs (SIGSTOP: its socket still accepts, nothing answers), through a real gateway: when the caller leaves, the
session's close (the SDK's DELETE, which nothing answers) is bounded, so the gateway lets go of the session's
task and sockets instead of holding them until the backend wakes up (for ever if it never does)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import Gateway, running_gateway, write_config
from tests.test_chaos20_http_stall import _everything_over_http

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

GAVE_UP = "a client's dedicated session did not close within"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _sockets_to(gateway: Gateway, url: str) -> set[tuple[str, int]]:
    """The gateway's open TCP connections to the backend (by local address)."""
    port = int(url.split(":")[2].split("/")[0])
    connections = psutil.Process(gateway.proc.pid).net_connections(kind="tcp")
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.raddr and c.raddr.port == port}


async def _sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message="unused")


async def test_a_dedicated_session_to_a_hung_http_backend_is_let_go_when_its_caller_leaves(tmp_path: Path) -> None:
    with _everything_over_http() as (server, url):
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}],
            "health": {"enabled": False},  # the shared session stays as it is while the backend hangs
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            shared = _sockets_to(gateway, url)
            async with Client(gateway.url, mode="legacy", sampling_callback=_sampling) as client:
                result = await client.call_tool("web_echo", {"message": "own session"})
                assert not result.is_error, result
                assert _sockets_to(gateway, url) - shared  # the caller's own session has its own connection
                server.send_signal(signal.SIGSTOP)
            # The caller left: its dedicated session's DELETE goes unanswered.
            deadline = time.monotonic() + 30  # the bound is 5 s; generous for a loaded machine
            held = _sockets_to(gateway, url) - shared
            while (held or GAVE_UP not in gateway.output()) and time.monotonic() < deadline:
                await anyio.sleep(0.2)
                held = _sockets_to(gateway, url) - shared
            output = gateway.output()
            assert not held, f"the gateway still holds {held} to the hung backend\n{output}"
            assert GAVE_UP in output, output
            assert "Traceback" not in output, output
