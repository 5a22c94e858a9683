"""A request the gateway itself cannot send is refused as bad arguments, and never counts against the backend.

A client's JSON can nest only as deep as the SDK's parser takes (`MAX_ARGUMENT_DEPTH` for a call's arguments), but a
string the gateway decodes (call_tool's string `arguments`, a workflow step's `fromjson`) can hold any depth, and
lone surrogates. Such arguments used to fail in the gateway's own encoding of the backend request: the breaker
counted each as a backend failure, so any client opened a backend's circuit for everyone, and a lone surrogate ended
a stdio backend's session. Over a real gateway, real demo backends and the SDK client; the last test drives the real
health monitor and backend process in-process, where the SDK's own encoding error can still be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import DEMO_SERVER, Gateway, demo_backend, raw_session, running_gateway, write_config
from vmcp_opt.argument_sendable import MAX_ARGUMENT_DEPTH
from vmcp_opt.backends import BackendManager
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import HealthMonitor
from vmcp_opt.optimizer.meta_tool_forms import MAX_BACKEND_FILTER

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Consecutive failures that open a circuit here; every attack below is repeated past it.
THRESHOLD = 3
ATTACKS = THRESHOLD + 2
# The depth the review's attack used: past the SDK's encoder (255), within `json.loads`'s reach.
DEEP = 300
DEEP_REFUSAL = f"nested more than {MAX_ARGUMENT_DEPTH} levels deep"
WORKFLOW = {
    "name": "decoded_step",
    "description": "passes a client's JSON text, decoded, to a backend tool",
    "parameters": {"type": "object", "properties": {"doc": {"type": "string"}}, "required": ["doc"]},
    "steps": [{"id": "a", "tool": "wf_whoami", "arguments": {"x": "{{ params.doc | fromjson }}"}}],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def nested(levels: int) -> str:
    """JSON text of lists nested `levels` deep."""
    return "[" * levels + "]" * levels


def with_x(levels: int) -> str:
    """JSON text of arguments whose `x` is lists nested `levels` deep (the arguments nest one level more)."""
    return '{"x": ' + nested(levels) + "}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One backend per test (each test reads its own backend's circuit), the optimizer's call_tool, a workflow."""
    directory = tmp_path_factory.mktemp("breaker-local-errors")
    config = {
        "backends": [demo_backend(name) for name in ("ct", "wf", "sg", "edge")],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "optimizer": {"enabled": True, "index_dir": str(directory / "index"), "vector_wait": 0},
        "failure": {"circuit_breaker": {"failure_threshold": THRESHOLD}},
        "workflows": [WORKFLOW],
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(gateway: Gateway, tool: str, arguments: dict[str, Any] | str) -> types.CallToolResult:
    """`tool` called through call_tool by a client of its own (`arguments` in either of call_tool's forms)."""
    async with Client(gateway.url) as client:
        return await client.call_tool("call_tool", {"tool_name": tool, "arguments": arguments})


def circuit(gateway: Gateway, backend: str) -> dict[str, Any]:
    backends = httpx2.get(f"{gateway.base}/readyz", timeout=30).json()["backends"]
    found: dict[str, Any] = next(b for b in backends if b["name"] == backend)["circuit"]
    return found


async def assert_serves_everyone(gateway: Gateway, backend: str) -> int:
    """Another client's plain call is served and the circuit is closed with no failure counted; the backend's pid."""
    result = await call(gateway, f"{backend}_whoami", {})
    assert not result.is_error, text(result)
    state = circuit(gateway, backend)
    assert (state["state"], state["consecutive_failures"]) == ("closed", 0), state
    assert isinstance(result.structured_content, dict)
    pid: int = result.structured_content["pid"]
    return pid


async def test_call_tool_string_nested_past_the_bound_is_refused_and_the_circuit_stays_closed(
    gateway: Gateway,
) -> None:
    for _ in range(ATTACKS):
        async with Client(gateway.url) as client:
            refused = await client.call_tool("call_tool", {"tool_name": "ct_whoami", "arguments": with_x(DEEP)})
        assert refused.is_error
        assert text(refused).startswith(f"invalid arguments for tool 'call_tool': field 'arguments': {DEEP_REFUSAL}")
    # The bound is call_tool's own arguments object: its `arguments` field may nest one level less.
    within = with_x(MAX_ARGUMENT_DEPTH - 2)
    async with Client(gateway.url) as client:
        served = await client.call_tool("call_tool", {"tool_name": "ct_whoami", "arguments": within})
        past = await client.call_tool(
            "call_tool", {"tool_name": "ct_whoami", "arguments": with_x(MAX_ARGUMENT_DEPTH - 1)}
        )
    assert not served.is_error, text(served)
    assert past.is_error and DEEP_REFUSAL in text(past)
    await assert_serves_everyone(gateway, "ct")


async def test_the_bound_is_as_deep_as_a_client_can_send_arguments(gateway: Gateway) -> None:
    headers = raw_session(gateway.url)

    def post(levels: int) -> httpx2.Response:
        arguments = with_x(levels - 1)  # the arguments object is the first level
        params = '{"name": "edge_whoami", "arguments": ' + arguments + "}"
        body = '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": ' + params + "}"
        return httpx2.post(gateway.url, content=body.encode(), headers=headers, timeout=60)

    deepest = post(MAX_ARGUMENT_DEPTH)
    assert deepest.status_code == 200, deepest.text[:300]
    assert deepest.json()["result"]["isError"] is False, deepest.text[:300]
    deeper = post(MAX_ARGUMENT_DEPTH + 1)
    assert deeper.json()["error"]["code"] == types.PARSE_ERROR, deeper.text[:300]
    await assert_serves_everyone(gateway, "edge")


async def test_a_workflow_step_fed_deep_data_is_refused_and_the_circuit_stays_closed(gateway: Gateway) -> None:
    for _ in range(ATTACKS):
        refused = await call(gateway, "decoded_step", {"doc": nested(DEEP)})
        assert refused.is_error
        assert f"invalid arguments for tool 'wf_whoami': field 'x': {DEEP_REFUSAL}" in text(refused), text(refused)
    served = await call(gateway, "decoded_step", {"doc": nested(MAX_ARGUMENT_DEPTH - 1)})
    assert not served.is_error, text(served)
    await assert_serves_everyone(gateway, "wf")


async def test_a_decoded_lone_surrogate_is_refused_and_the_backend_session_lives_on(gateway: Gateway) -> None:
    before = await assert_serves_everyone(gateway, "sg")
    for _ in range(ATTACKS):
        # JSON text with the escape `\ud800`: the front's parser refuses a lone surrogate, `json.loads` makes one.
        refused = await call(gateway, "sg_whoami", '{"x": ["ok", "\\ud800"]}')
        assert refused.is_error
        assert text(refused).startswith("invalid arguments for tool 'call_tool': field 'arguments': holds a lone")
    assert await assert_serves_everyone(gateway, "sg") == before  # the same process: its session never ended


async def test_find_tool_refuses_a_backends_filter_over_its_maximum(gateway: Gateway) -> None:
    names = [f"b{i}" for i in range(MAX_BACKEND_FILTER + 1)]
    async with Client(gateway.url) as client:
        listed = await client.list_tools()
        as_list = await client.call_tool("find_tool", {"query": "notes", "backends": names})
        as_text = await client.call_tool("find_tool", {"query": "notes", "backends": ",".join(names)})
    find_tool = next(tool for tool in listed.tools if tool.name == "find_tool")
    assert find_tool.input_schema["properties"]["backends"]["maxItems"] == MAX_BACKEND_FILTER
    expected = (
        f"invalid arguments for tool 'find_tool': field 'backends': {len(names):,} names, over the maximum of "
        f"{MAX_BACKEND_FILTER:,}; leave it out to search every backend"
    )
    assert (as_list.is_error, text(as_list)) == (True, expected)
    assert (as_text.is_error, text(as_text)) == (True, expected)


async def test_a_request_the_sdk_cannot_encode_is_not_a_backend_failure() -> None:
    """Past the argument check (a gateway's own request), the SDK's encoder refuses it before anything is sent."""
    config = VmcpConfig.model_validate(
        {
            "backends": [{"name": "notes", "command": sys.executable, "args": [str(DEMO_SERVER)]}],
            "failure": {"circuit_breaker": {"failure_threshold": THRESHOLD}},
        }
    )
    backends = BackendManager(config)
    health = HealthMonitor(backends, config)
    deep: Any = []
    for _ in range(DEEP):
        deep = [deep]
    unsendable = types.CallToolRequest(params=types.CallToolRequestParams(name="whoami", arguments={"x": deep}))
    plain = types.CallToolRequest(params=types.CallToolRequestParams(name="whoami", arguments={}))
    async with anyio.create_task_group() as task_group:
        await backends.start(task_group)
        try:
            for _ in range(ATTACKS):
                with pytest.raises(MCPError) as refused:
                    await health.request("notes", unsendable, types.CallToolResult)
                assert refused.value.code == types.INTERNAL_ERROR
                assert refused.value.message == (
                    "the request for backend 'notes' failed in the gateway: ValueError: Maximum serialization depth "
                    "exceeded"
                )
            result = await health.request("notes", plain, types.CallToolResult)
            assert not result.is_error, text(result)
            summary = health.summary("notes")["circuit"]
            assert (summary["state"], summary["consecutive_failures"]) == ("closed", 0), summary
        finally:
            backends.stop()
