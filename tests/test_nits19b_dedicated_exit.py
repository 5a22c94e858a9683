"""A client's own backend session (routing/dedicated.py: a 2025-11-25 client that can answer sampling gets one
to each backend it uses) whose stdio process exits mid-call: the call's error names the exit status, as a call
on the shared session does (test_fix8_exit_in_call.py), rather than "Connection closed" alone; the process's last
stderr line stays in the log and /readyz. A real gateway, the scripted stdio backend, a real SDK client."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext

from tests.scripted_backend import scripted
from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "hunter2-dedicated-password"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_call_on_a_clients_own_session_whose_process_exits_names_the_exit_status(tmp_path: Path) -> None:
    backend = scripted(
        "db",
        "--exit-in-call",
        "3",
        "--kill-in-call",
        "--last-words",
        "fatal: login refused for {DB_PASSWORD}",
        env={"DB_PASSWORD": SECRET},
    )
    config = {"backends": [backend], "health": {"interval": 3600}, "failure": {"restart": {"enabled": False}}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            assert text(await client.call_tool("db_ok", {})) == "fine"
            exited = await client.call_tool("db_exit", {})
            killed = await client.call_tool("db_kill", {})  # on the client's next own session: a new process
            # The shared session's process is another one, still running: only this client's exited.
            async with Client(gateway.url) as other:
                assert text(await other.call_tool("db_ok", {})) == "fine"
        output = gateway.output()

    said = text(exited)
    assert exited.is_error, said
    assert "Connection closed: the process exited with code 3" in said, said
    assert "stderr" not in said and "login refused" not in said, said  # the line stays in the log and /readyz
    assert SECRET not in said and SECRET not in output
    said = text(killed)
    assert killed.is_error, said
    assert "Connection closed: the process was killed by signal 9 (SIGKILL)" in said, said
    assert SECRET not in said
