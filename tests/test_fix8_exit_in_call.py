"""A stdio backend whose process exits while a client's tools/call is in flight, through a real gateway and a
real SDK client: the call's error says with what status the process exited, not only "Connection closed"; its
last stderr line goes to the log and /readyz (masked), never to the client."""

from __future__ import annotations

import time
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from tests.scripted_backend import scripted
from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "hunter2-very-secret-password"

# Its `exit` tool writes a stderr line (the secret in it, from the backend's env) and exits with code 7 without
# answering.
DB = scripted(
    "db", "--exit-in-call", "7", "--last-words", "fatal: login refused for {DB_PASSWORD}", env={"DB_PASSWORD": SECRET}
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_call_whose_stdio_backend_exits_says_the_exit_status(tmp_path: Path) -> None:
    config = {
        "backends": [DB],
        "health": {"interval": 3600},
        "failure": {"restart": {"enabled": False}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert text(await client.call_tool("db_ok", {})) == "fine"
            started = time.monotonic()
            exited = await client.call_tool("db_exit", {})
            waited = time.monotonic() - started
        output = gateway.output()

    said = text(exited)
    assert exited.is_error, said
    assert said.startswith("backend 'db': Connection closed: the process exited with code 7"), said
    assert "stderr" not in said and "login refused" not in said, said  # the line stays in the log and /readyz
    assert SECRET not in said and SECRET not in output
    assert waited < 10, waited  # bounded: the wait for the exit status is half a second at most
