"""The real `vmcp serve` process over real backends (stdio and streamable HTTP), driven by real clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.support import (
    DEMO_SERVER,
    EXAMPLES,
    NODE_BIN,
    Gateway,
    demo_backend,
    http_demo_backend,
    running_gateway,
    unavailable,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Four backends of three kinds: a PyPI server and an npm server over stdio, the demo over stdio and HTTP."""
    directory = tmp_path_factory.mktemp("gateway")
    with http_demo_backend() as web_url:
        config = {
            "backends": [
                {"name": "time", "command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
                {"name": "everything", "command": str(NODE_BIN / "mcp-server-everything")},
                demo_backend("notes", env={"DEMO_NAME": "notes"}),
                {"name": "web", "transport": "streamable-http", "url": web_url},
            ],
        }
        with running_gateway(write_config(directory, config)) as running:
            yield running


async def test_tools_from_every_backend_are_listed_and_callable(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"time_get_current_time", "everything_echo", "notes_save_note", "web_save_note"} <= names
        result = await client.call_tool("time_get_current_time", {"timezone": "Asia/Tokyo"})
        assert not result.is_error
        assert json.loads(result.content[0].text)["timezone"] == "Asia/Tokyo"  # type: ignore[union-attr]
        echoed = await client.call_tool("everything_echo", {"message": "through the gateway"})
        assert "through the gateway" in echoed.content[0].text  # type: ignore[union-attr]
        saved = await client.call_tool("web_save_note", {"title": "t", "text": "over http"})
        assert "saved note 't'" in saved.content[0].text  # type: ignore[union-attr]


async def test_calls_route_to_the_owning_backend_under_its_original_name(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        who = await client.call_tool("notes_whoami", {})
        assert who.structured_content is not None and who.structured_content["name"] == "notes"


async def test_both_protocol_revisions_are_served(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="legacy") as legacy, Client(gateway.url) as modern:
        assert legacy.protocol_version == "2025-11-25"
        assert modern.protocol_version == "2026-07-28"
        for client in (legacy, modern):
            result = await client.call_tool("everything_get-sum", {"a": 2, "b": 3})
            assert "5" in result.content[0].text  # type: ignore[union-attr]


async def test_wrong_arguments_get_an_error_naming_the_field(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        missing = await client.call_tool("time_get_current_time", {})
        assert missing.is_error
        assert "field 'timezone'" in missing.content[0].text  # type: ignore[union-attr]
        wrong_type = await client.call_tool("everything_get-sum", {"a": "two", "b": 3})
        assert wrong_type.is_error
        assert "field 'a'" in wrong_type.content[0].text  # type: ignore[union-attr]


async def test_unknown_tool_prompt_and_resource_are_clear_errors(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        with pytest.raises(MCPError, match="Unknown tool: 'no_such_tool'"):
            await client.call_tool("no_such_tool", {})
        with pytest.raises(MCPError, match="Unknown prompt"):
            await client.get_prompt("no_such_prompt")
        with pytest.raises(MCPError, match="Resource not found"):
            await client.read_resource("nowhere://at/all")
        # ...and the gateway keeps serving.
        assert (await client.call_tool("notes_search_notes", {"query": "x"})).is_error is False


async def test_resources_templates_and_prompts_are_routed(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await client.call_tool("notes_save_note", {"title": "groceries", "text": "milk"})
        resources = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert "notes://all" in resources
        assert any(uri.startswith("demo://resource") for uri in resources)
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert "notes://note/{title}" in templates
        note = await client.read_resource("notes://note/groceries")
        assert note.contents[0].text == "milk"  # type: ignore[union-attr]
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"notes_summarize_notes", "everything_simple-prompt"} <= prompts
        prompt = await client.get_prompt("notes_summarize_notes", {"style": "bullet"})
        assert "bullet" in prompt.messages[0].content.text  # type: ignore[union-attr]
        # A required argument missing is named by the gateway (the backend's own answer told nothing)...
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("everything_args-prompt", {"state": "Texas"})
        assert missing.value.error.code == types.INVALID_PARAMS
        assert missing.value.error.message == "prompt 'everything_args-prompt': missing required argument(s) 'city'"
        # ...and the optional one may be left out.
        weather = await client.get_prompt("everything_args-prompt", {"city": "Austin"})
        assert "Austin" in weather.messages[0].content.text  # type: ignore[union-attr]


async def test_answers_carry_the_gateways_server_info_not_a_backends(gateway: Gateway) -> None:
    """A 2026-07-28 backend stamps its results with its own name; the client talks to the gateway."""
    key = "io.modelcontextprotocol/serverInfo"
    async with Client(gateway.url) as client:
        called = await client.call_tool("notes_search_notes", {"query": "x"})
        prompt = await client.get_prompt("notes_summarize_notes", {"style": "bullet"})
        listed = await client.list_tools()
    for result in (called, prompt, listed):
        assert result.meta is not None and result.meta[key]["name"] == "vmcp-opt", result.meta


async def test_list_changed_from_a_backend_reaches_clients_of_both_eras(gateway: Gateway) -> None:
    told = anyio.Event()
    kinds: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.Notification) and message.method.endswith("/list_changed"):
            kinds.append(message.method)
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    async with Client(gateway.url, mode="legacy", message_handler=on_message) as legacy, Client(gateway.url) as modern:
        async with modern.listen(tools_list_changed=True) as subscription:
            await legacy.call_tool("notes_add_tool", {"name": "shout", "description": "Say it loudly"})
            with anyio.fail_after(30):
                event = await subscription.__anext__()
            assert type(event).__name__ == "ToolsListChanged"
        with anyio.fail_after(30):
            await told.wait()
        # Only the list that changed: the others, were they sent, follow within milliseconds.
        await anyio.sleep(0.5)
        assert kinds == ["notifications/tools/list_changed"]
        assert "notes_shout" in {tool.name for tool in (await legacy.list_tools()).tools}
        assert (await legacy.call_tool("notes_shout", {"text": "hi"})).content[0].text == "shout: hi"  # type: ignore[union-attr]


def test_malformed_json_rpc_gets_spec_errors_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    garbage = httpx2.post(gateway.url, content=b"{not json", headers=headers, timeout=10)
    assert garbage.status_code == 400
    assert garbage.json()["error"]["code"] == types.PARSE_ERROR
    wrong_shape = httpx2.post(
        gateway.url, json={"jsonrpc": "2.0", "id": 1, "nomethod": True}, headers=headers, timeout=10
    )
    assert wrong_shape.status_code == 400
    assert wrong_shape.json()["error"]["code"] in (types.INVALID_REQUEST, types.PARSE_ERROR)

    async def still_serving() -> None:
        async with Client(gateway.url) as client:
            assert (await client.call_tool("everything_echo", {"message": "ok"})).is_error is False

    anyio.run(still_serving)


def test_readyz_reports_every_backend(gateway: Gateway) -> None:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
    states = {backend["name"]: backend["state"] for backend in body["backends"]}
    assert set(states) == {"time", "everything", "notes", "web"}
    assert httpx2.get(f"{gateway.base}/healthz", timeout=10).json() == {"status": "ok"}


def test_inspector_cli_lists_and_calls_tools_through_the_gateway(gateway: Gateway) -> None:
    inspector = NODE_BIN / "mcp-inspector"
    if not inspector.exists():
        unavailable("the inspector is not installed (run scripts/setup.sh)")
    base = [str(inspector), "--cli", gateway.url, "--transport", "http"]
    listed = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "time_get_current_time" in {tool["name"] for tool in json.loads(listed.stdout)["tools"]}
    called = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "everything_echo", "--tool-arg", "message=inspected"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert called.returncode == 0, called.stderr
    assert "inspected" in called.stdout


# --- conflict strategies, with two instances of the same server that really collide ------------------


def twin_config(strategy: str, **aggregation: Any) -> dict[str, Any]:
    return {
        "backends": [
            demo_backend("alpha", env={"DEMO_NAME": "alpha"}),
            demo_backend("beta", env={"DEMO_NAME": "beta"}),
        ],
        "aggregation": {"conflict_resolution": strategy, **aggregation},
    }


async def whoami(client: Client, tool: str) -> str:
    result = await client.call_tool(tool, {})
    assert result.structured_content is not None
    return str(result.structured_content["name"])


async def test_priority_strategy_routes_to_the_first_backend_in_priority(tmp_path: Path) -> None:
    with running_gateway(write_config(tmp_path, twin_config("priority", priority=["beta", "alpha"]))) as gw:
        async with Client(gw.url) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert names.count("whoami") == 1 and "alpha_whoami" not in names
            assert await whoami(client, "whoami") == "beta"


async def test_manual_strategy_with_overrides_exposes_both(tmp_path: Path) -> None:
    overrides = {
        "beta": {
            "overrides": {
                name: {"name": f"b_{name}"} for name in ("save_note", "search_notes", "slow_echo", "whoami", "add_tool")
            }
        }
    }
    with running_gateway(write_config(tmp_path, twin_config("manual", tools=overrides))) as gw:
        async with Client(gw.url) as client:
            assert await whoami(client, "whoami") == "alpha"
            assert await whoami(client, "b_whoami") == "beta"
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert {"summarize_notes", "beta_summarize_notes"} <= prompts  # prompts fall back to the prefix


@pytest.mark.parametrize("optimizer", ["--no-optimizer", "--optimizer"])
async def test_manual_strategy_unresolved_conflict_keeps_serving_naming_both_backends_and_the_override(
    tmp_path: Path, optimizer: str
) -> None:
    # A backend choosing a name another one has must not stop the gateway: the first backend keeps it.
    config = write_config(tmp_path, {**twin_config("manual"), "optimizer": {"index_dir": str(tmp_path / "idx")}})
    with running_gateway(config, optimizer) as gw:
        async with Client(gw.url) as client:
            for _ in range(600):  # with the optimizer on, the catalogue fills in after start (60 s at most)
                if "backend beta: tool 'whoami' dropped" in gw.output():
                    break
                await anyio.sleep(0.1)
            assert await whoami(client, "whoami") == "alpha"  # callable by name, listed or behind the optimizer
    log = gw.output()
    assert "backend beta: tool 'whoami' dropped: backend 'alpha' already exposes 'whoami'" in log
    assert "aggregation.tools.beta.overrides.whoami.name" in log


async def test_filters_and_overrides_shape_the_catalogue(tmp_path: Path) -> None:
    tools = {
        "alpha": {
            "include": ["*note*", "whoami"],
            "exclude": ["search_*"],
            "overrides": {"whoami": {"name": "which_server", "description": "Which demo server answers."}},
        }
    }
    config = {"backends": [demo_backend("alpha", env={"DEMO_NAME": "alpha"})], "aggregation": {"tools": tools}}
    with running_gateway(write_config(tmp_path, config)) as gw:
        async with Client(gw.url) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(listed) == {"alpha_save_note", "which_server"}
            assert listed["which_server"].description == "Which demo server answers."
            assert await whoami(client, "which_server") == "alpha"


async def test_a_legacy_sse_backend_is_aggregated_and_routed(tmp_path: Path) -> None:
    with http_demo_backend(sse=True) as sse_url:
        config = {"backends": [{"name": "old", "transport": "sse", "url": sse_url}]}
        with running_gateway(write_config(tmp_path, config)) as gw:
            async with Client(gw.url) as client:
                assert "old_save_note" in {tool.name for tool in (await client.list_tools()).tools}
                result = await client.call_tool("old_save_note", {"title": "sse", "text": "over the old transport"})
                assert not result.is_error
                note = await client.read_resource("notes://note/sse")
                assert note.contents[0].text == "over the old transport"  # type: ignore[union-attr]


async def test_discovered_mode_serves_a_claude_desktop_config_but_not_the_gateway_itself(tmp_path: Path) -> None:
    desktop = tmp_path / "claude_desktop_config.json"
    servers = {
        "time": {"command": "python", "args": ["-m", "mcp_server_time"]},
        # What the banner tells users to add: the gateway itself, which discovery must not start again.
        "vmcp": {"command": sys.executable, "args": ["-m", "vmcp_opt", "serve", "--stdio", "-c", str(desktop)]},
    }
    desktop.write_text(json.dumps({"mcpServers": servers}))
    config = write_config(tmp_path, {"discovery": {"mode": "discovered", "path": str(desktop)}})
    with running_gateway(config) as gw:
        async with Client(gw.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
        assert "time_get_current_time" in names
        assert not any(name.startswith("vmcp_") for name in names), names
        assert "skipping 'vmcp'" in gw.output() and "launches this gateway" in gw.output()


def test_the_banner_snippet_for_claude_desktop_runs_the_config_in_use(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    with running_gateway(config) as gw:
        deadline = time.monotonic() + 30
        while "mcpServers" not in gw.output() and time.monotonic() < deadline:
            time.sleep(0.1)
    snippet = next(line for line in gw.output().splitlines() if "mcpServers" in line)
    assert json.loads(snippet)["mcpServers"]["vmcp"]["args"] == ["serve", "--stdio", "-c", str(config.resolve())]


def test_a_port_in_use_is_reported_before_any_backend_starts(tmp_path: Path) -> None:
    started = tmp_path / "backend-started"
    backend = {"name": "marker", "command": sys.executable, "args": ["-c", f"open({str(started)!r}, 'w')"]}
    config = write_config(tmp_path, {"backends": [backend]})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
    assert not started.exists()


# --- the gateway over stdio, and clean shutdown ---------------------------------------------------------


async def test_stdio_gateway_serves_a_desktop_client_and_leaves_no_orphans(tmp_path: Path) -> None:
    # This gateway's backends carry a marker of their own, so other tests' backends on the machine never count.
    marker = f"orphan-check-{uuid.uuid4().hex}"
    config = write_config(tmp_path, {"backends": [demo_backend("notes", env={"VMCP_TEST_MARKER": marker})]})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)]
    )
    async with Client(params) as client:
        assert "notes_save_note" in {tool.name for tool in (await client.list_tools()).tools}
        backends = _marked(marker)
        assert backends, "the backend process carries the marker"
        result = await client.call_tool("notes_save_note", {"title": "a", "text": "b"})
        assert not result.is_error
    _gone, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs(backends, timeout=15))
    assert alive == []  # the gateway stopped its backends as it exited
    assert _marked(marker) == []


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("VMCP_TEST_MARKER") == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_sigterm_stops_the_gateway_and_its_backend_processes(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backends": [
                demo_backend("one"),
                {
                    "name": "mem",
                    "command": str(NODE_BIN / "mcp-server-memory"),
                    "env": {"MEMORY_FILE_PATH": str(tmp_path / "m.jsonl")},
                },
            ]
        },
    )
    with running_gateway(config) as gw:
        children = gw.children()
        assert len(children) >= 2
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    # uvicorn re-raises SIGTERM once it has shut down cleanly, so the exit status is the signal's.
    assert gw.proc.returncode in (0, -15)
    assert "Traceback" not in gw.output()


def test_sigterm_while_backends_are_still_connecting_stops_cleanly(tmp_path: Path) -> None:
    """With the optimizer on the gateway serves at once; a stop before the backends arrive must not hang."""
    slow = {"name": "slow", "command": "sh", "args": ["-c", f"sleep 3; exec {sys.executable} {DEMO_SERVER}"]}
    config = write_config(
        tmp_path, {"backends": [slow], "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx")}}
    )
    with running_gateway(config, wait_ready=False) as gw:
        body = httpx2.get(f"{gw.base}/readyz", timeout=10).json()
        assert body["status"] == "starting"
        children = gw.children()
    assert gw.proc.wait(timeout=20) in (0, -15)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


async def test_sigterm_stops_a_stdio_gateway_whose_client_keeps_stdin_open(tmp_path: Path) -> None:
    """A desktop client keeps stdin open: the signal alone must stop the gateway, answering the call in flight."""
    held = {"name": "held", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "held_server.py")]}
    # The held call never answers: the gateway gives it `timeouts.shutdown` (5 s by default) before it stops. What is
    # checked is that the signal stops it at all (before: it waited for stdin to close), not for how long.
    config = write_config(tmp_path, {"backends": [held], "timeouts": {"shutdown": 1}})
    gate, status = tmp_path / "gate", tmp_path / "status"
    # A shell between client and gateway records the gateway's exit status; the client still holds stdin.
    command = f'"{sys.executable}" -m vmcp_opt serve --stdio -c "{config}"; echo $? > "{status}"'
    async with Client(StdioServerParameters(command="sh", args=["-c", command])) as client:
        await client.list_tools()
        [gateway] = [p for p in psutil.Process().children(recursive=True) if "--stdio" in p.cmdline()]

        async def call_then_signal() -> None:
            await _appears(Path(f"{gate}.started"))
            gateway.send_signal(signal.SIGTERM)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call_then_signal)
            with anyio.fail_after(60), pytest.raises(MCPError):
                await client.call_tool("held_held_echo", {"message": "m", "gate": str(gate)})
        await _appears(status)
        assert status.read_text().strip() == "0"


async def _appears(path: Path) -> None:
    with anyio.fail_after(60):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.05)
