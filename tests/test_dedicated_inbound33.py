"""A backend flooding only a client's own (dedicated) session, through a real gateway and real backend processes:
its messages are counted on /metrics under the backend's name and warned of, as the shared session's are, and junk
on its stdout ends that session with a call cut off told why, while another client's calls are answered.

The backend is tests/hostile_backend32.py behind a launcher: the first process (the gateway's shared session) is
quiet, every later one (a client's own session) floods; its `drip` never answers, a call in flight meanwhile."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import demo_backend, metric_sample, running_gateway, wait_until, write_config

HOSTILE = Path(__file__).with_name("hostile_backend32.py")
HANG_GUARD = 60.0  # not a bound under test: how long a loaded machine may take before a test gives up
LAUNCHER = """
import importlib.util, os, sys
marker, path = sys.argv[1], sys.argv[2]
try:
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    os.environ["MODE"] = "none"  # the first process: the gateway's shared session
except FileExistsError:
    pass
spec = importlib.util.spec_from_file_location("hostile32", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.drip = lambda request_id: None  # never answered: a call stays in flight while the flood runs
module.main()
"""
WARNED = re.compile(r"backend hostile sends log messages at \d+ a second")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def flooding_config(tmp_path: Path, mode: str) -> Path:
    hostile = {
        "name": "hostile",
        "command": sys.executable,
        "args": ["-c", LAUNCHER, str(tmp_path / "first-process"), str(HOSTILE)],
        "env": {"MODE": mode},
    }
    config = {"backends": [hostile, demo_backend("notes")], "telemetry": {"metrics": {"enabled": True}}}
    return write_config(tmp_path, config)


def backends(base: str) -> list[dict[str, Any]]:
    backends: list[dict[str, Any]] = httpx2.get(f"{base}/readyz", timeout=10.0).json()["backends"]
    return backends


def own_session_client(url: str) -> Client:
    """A 2025-11-25 client that can answer elicitations: every backend it calls gets a session of its own."""

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    return Client(url, mode="legacy", elicitation_callback=elicitation)  # type: ignore[arg-type]


async def until(condition: Any, output: Any) -> None:
    """`wait_until` off the event loop: the clients' streams are read meanwhile."""
    await anyio.to_thread.run_sync(wait_until, condition, HANG_GUARD, output)


async def answered(client: Client, tool: str) -> str:
    """The call's text, or its error's: a failed backend call may come back either way."""
    try:
        result = await client.call_tool(tool, {"query": "x"})
    except MCPError as exc:
        return f"error: {exc.error.message}"
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    return f"error: {text}" if result.is_error else text


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_log_flood_on_a_clients_own_session_is_counted_under_the_backend_and_warned_of(
    tmp_path: Path,
) -> None:
    with running_gateway(flooding_config(tmp_path, "logs")) as gateway:
        wait_until(lambda: all(b["state"] == "ready" for b in backends(gateway.base)), HANG_GUARD, gateway.output)

        def counted(backend: str, kind: str) -> float:
            return metric_sample(gateway.base, "vmcp_backend_messages_total", backend=backend, kind=kind)

        async with (
            own_session_client(gateway.url) as flooded,
            Client(gateway.url) as other,
            anyio.create_task_group() as calls,
        ):
            calls.start_soon(answered, flooded, "hostile_drip")  # opens its own session, which floods
            await until(lambda: counted("hostile", "log") > 500, gateway.output)
            await until(lambda: WARNED.search(gateway.output()), gateway.output)
            assert not (await answered(other, "notes_search_notes")).startswith("error")
            calls.cancel_scope.cancel()
        labels = re.findall(
            r'vmcp_backend_messages_total\{backend="([^"]*)"', httpx2.get(f"{gateway.base}/metrics").text
        )
        assert set(labels) == {"hostile", "notes"}  # the configured names: no label per client or session


@pytest.mark.slow
@pytest.mark.anyio
async def test_junk_on_a_clients_own_session_ends_it_telling_the_call_why(tmp_path: Path) -> None:
    with running_gateway(flooding_config(tmp_path, "junk")) as gateway:
        wait_until(lambda: all(b["state"] == "ready" for b in backends(gateway.base)), HANG_GUARD, gateway.output)
        async with own_session_client(gateway.url) as flooded, Client(gateway.url) as other:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as calls:

                    async def cut_off() -> None:
                        told = await answered(flooded, "hostile_drip")
                        assert "its output was not JSON-RPC" in told, told
                        calls.cancel_scope.cancel()

                    calls.start_soon(cut_off)
                    while True:  # the other client's calls are answered while the junk is read
                        assert not (await answered(other, "notes_search_notes")).startswith("error")
                        await anyio.sleep(0.1)
            # The next call opens a new session of its own (the process is not the shared one, never restarted).
            assert "x" in await answered(flooded, "hostile_echo")
        log = gateway.output()
        assert "a client's dedicated session ended: its output was not JSON-RPC" in log
        assert "its output is unusable, its session ends" in log
        assert "the worker is at step" not in log  # the junk is never quoted
        assert all(b["restarts"] == 0 for b in backends(gateway.base) if b["name"] == "hostile")
