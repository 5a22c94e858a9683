"""A client's progress token on prompts/get or resources/read is the gateway's to replace, as on tools/call.

Before, the router forwarded these requests with the client's `_meta` unchanged: the backend reported progress
under the client's token, and the gateway's session to it, which uses its own request ids as progress tokens,
handed that progress to whichever of its requests had that id. So bob, on another API key, could make his
prompt's progress text show in alice's tool call (ids on the shared backend session are small sequential
integers), and bob's own progress never reached bob.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, api_keys_file, running_gateway, write_config

pytestmark = pytest.mark.anyio

# What a backend's progress takes at most to reach a client, on a loaded machine.
DELIVERY_DEADLINE = 30.0

# Holds each request until the test releases it (a file named for it appears), reporting progress first, so
# the progress is always delivered while the request is still open.
BACKEND = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio
    from mcp.server.mcpserver import Context, MCPServer

    STATE = Path(sys.argv[1])
    server = MCPServer("probe")


    async def held(ctx: Context, key: str) -> None:
        (STATE / f"id-{key}").write_text(str(ctx.request_id))
        await ctx.report_progress(1, 2, f"PROGRESS of {key}")
        while not (STATE / f"release-{key}").exists():
            await anyio.sleep(0.02)


    @server.tool()
    async def hold(ctx: Context, key: str) -> str:
        await held(ctx, key)
        return "released"


    @server.prompt()
    async def report(ctx: Context, key: str) -> str:
        await held(ctx, key)
        return "released"


    @server.resource("probe://held/{key}")
    async def held_resource(key: str, ctx: Context) -> str:
        await held(ctx, key)
        return "released"


    server.run()
    """
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Path]]:
    directory = tmp_path_factory.mktemp("progress-forgery")
    state = directory / "state"
    state.mkdir()
    (directory / "probe.py").write_text(BACKEND)
    keys = api_keys_file(directory / "keys.json", {"alice": ["dev"], "bob": ["dev"]})
    backend = {"name": "probe", "command": sys.executable, "args": [str(directory / "probe.py"), str(state)]}
    config = {"backends": [backend], "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}}}
    with running_gateway(write_config(directory, config)) as running:
        yield running, keys, state


@asynccontextmanager
async def client(url: str, key: str, mode: str, progress: list[str]) -> AsyncIterator[Any]:
    """An SDK client on API key `key` that records the message of every progress notification it receives."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/progress":
            progress.append(str(root.params.message))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    transport = streamable_http_client(url, http_client=http)
    async with Client(transport, mode=mode, message_handler=on_message) as connected:  # type: ignore[arg-type]
        yield connected


async def backend_id(state: Path, key: str) -> int:
    """The backend's request id of the held request `key`, once it runs there."""
    with anyio.fail_after(DELIVERY_DEADLINE):
        while not (found := state / f"id-{key}").exists() or not found.read_text():  # noqa: ASYNC110 - another process writes it
            await anyio.sleep(0.02)
    return int(found.read_text())


@contextmanager
def releasing(state: Path, *keys: str) -> Iterator[None]:
    """The held requests `keys` are released on the way out, whatever happened."""
    try:
        yield
    finally:
        for key in keys:
            (state / f"release-{key}").touch()


async def until(condition: Any) -> None:
    with anyio.fail_after(DELIVERY_DEADLINE):
        while not condition():  # noqa: ASYNC110 - the conditions read lists the clients' handlers fill
            await anyio.sleep(0.02)


async def held_request(bob: Any, how: str, key: str, token: str | int) -> Any:
    meta: Any = {"progressToken": token}
    if how == "prompt":
        return await bob.get_prompt("probe_report", {"key": key}, meta=meta)
    return await bob.read_resource(f"probe://held/{key}", meta=meta)


ERAS = [("2026-07-28", "legacy"), ("legacy", "2026-07-28")]


@pytest.mark.parametrize("how", ["prompt", "resource"])
@pytest.mark.parametrize(("alice_mode", "bob_mode"), ERAS)
async def test_a_forged_progress_token_never_reaches_another_callers_call(
    gateway: tuple[Gateway, dict[str, str], Path], how: str, alice_mode: str, bob_mode: str
) -> None:
    running, keys, state = gateway
    victim, forger = f"alice-{how}-{alice_mode}", f"bob-{how}-{bob_mode}"
    alice_seen: list[str] = []
    bob_seen: list[str] = []

    async def alice_progress(progress: float, total: float | None, message: str | None) -> None:
        alice_seen.append(str(message))

    async with (
        client(running.url, keys["alice"], alice_mode, []) as alice,
        client(running.url, keys["bob"], bob_mode, bob_seen) as bob,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: alice.call_tool("probe_hold", {"key": victim}, progress_callback=alice_progress))
        # Bob names alice's request on the backend session as his progress token.
        forged = await backend_id(state, victim)
        tasks.start_soon(held_request, bob, how, forger, forged)
        # The backend reported bob's progress before it answers; the test waits until one of them has it.
        with releasing(state, forger, victim):
            await until(lambda: any(f"PROGRESS of {forger}" in seen for seen in (*alice_seen, *bob_seen)))
    assert not [seen for seen in alice_seen if forger in seen], alice_seen
    assert f"PROGRESS of {victim}" in alice_seen  # alice's own progress still reaches her


@pytest.mark.parametrize("how", ["prompt", "resource"])
@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_a_callers_own_progress_on_prompts_and_resources_reaches_it(
    gateway: tuple[Gateway, dict[str, str], Path], how: str, mode: str
) -> None:
    running, keys, state = gateway
    key = f"own-{how}-{mode}"
    seen: list[str] = []
    async with client(running.url, keys["bob"], mode, seen) as bob, anyio.create_task_group() as tasks:
        tasks.start_soon(held_request, bob, how, key, f"token-{key}")
        with releasing(state, key):
            await until(lambda: f"PROGRESS of {key}" in seen)


MODERN_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def raw_answer(url: str, key: str, version: str, params: dict[str, Any]) -> Any:
    """A prompts/get sent with plain HTTP in one protocol era: its JSON-RPC error."""
    headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}"}
    if version == "2025-11-25":
        opened = httpx2.post(url, json=RAW_INITIALIZE, headers=headers, timeout=30)
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers, timeout=30)
    else:
        headers.update({"mcp-method": "prompts/get", "mcp-name": "probe_report"})
    headers["mcp-protocol-version"] = version
    request = {"jsonrpc": "2.0", "id": 7, "method": "prompts/get", "params": params}
    return httpx2.post(url, json=request, headers=headers, timeout=30).json()["error"]


@pytest.mark.parametrize(
    ("version", "params", "named"),
    [
        ("2025-11-25", {"name": "probe_report", "arguments": {"key": 5}}, "params.arguments.key"),
        ("2025-11-25", {"name": "probe_report", "arguments": ["x"]}, "params.arguments"),
        (
            "2026-07-28",
            {"name": "probe_report", "arguments": {"key": 5}, "_meta": MODERN_ENVELOPE},
            "params.arguments.key",
        ),
        (
            "2026-07-28",
            {"name": "probe_report", "_meta": {**MODERN_ENVELOPE, "io.modelcontextprotocol/logLevel": "loud"}},
            "params._meta['io.modelcontextprotocol/logLevel']",
        ),
    ],
)
def test_unreadable_params_are_answered_naming_the_field(
    gateway: tuple[Gateway, dict[str, str], Path], version: str, params: dict[str, Any], named: str
) -> None:
    running, keys, _ = gateway
    error = raw_answer(running.url, keys["bob"], version, params)
    assert error["code"] == -32602, error
    assert error["message"].startswith(f"Invalid params for prompts/get: {named}: "), error
    assert "loud" not in error["message"]  # the value sent is never repeated


async def test_a_uri_past_the_templates_bound_is_told_so(gateway: tuple[Gateway, dict[str, str], Path]) -> None:
    from mcp.shared.exceptions import MCPError

    running, keys, _ = gateway
    async with client(running.url, keys["bob"], "legacy", []) as bob:
        with pytest.raises(MCPError) as refused:
            await bob.read_resource("probe://held/" + "a" * 70_000)
    assert refused.value.error.message == "URI longer than 65,536 characters", refused.value.error
