"""Workflows against what a client (or a backend) can make them do, in the real `vmcp serve` over real
backends: re-entering themselves through call_tool, JSON nested too deeply, templates that would compute
or allocate without end, results past `limits.max_result_bytes`, elicitation runs past
`limits.max_pending_calls_per_caller`, and what a failing run writes to the log."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CAP = 100_000  # limits.max_result_bytes of these gateways


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def params(**properties: str) -> dict[str, Any]:
    return {"type": "object", "properties": {k: {"type": v} for k, v in properties.items()}}


def echo(value: str, **step: Any) -> dict[str, Any]:
    return {"id": "a", "tool": "notes_slow_echo", "arguments": {"message": value, "seconds": 0}, **step}


WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "wf_fromjson",
        "description": "d",
        "parameters": params(s="string"),
        "steps": [echo("{{ params.s|fromjson }}")],
    },
    {
        "name": "wf_over",
        "description": "d",
        "parameters": params(s="string"),
        "steps": [echo("{{ item }}", type="for_each", over="{{ params.s }}")],
    },
    {
        "name": "wf_center",
        "description": "d",
        "parameters": params(s="string", w="integer"),
        "steps": [echo("{{ params.s|center(params.w)|length }}")],
    },
    {
        "name": "wf_pow",
        "description": "d",
        "parameters": params(base="integer", e="integer"),
        "steps": [echo("{{ ((params.base ** 1000) ** 1000) ** params.e % 7 }}")],
    },
    {
        "name": "wf_loops",
        "description": "d",
        "parameters": params(n="integer"),
        "timeout": 3,
        "steps": [echo("{% for i in range(params.n) %}{% for j in range(params.n) %}{% endfor %}{% endfor %}")],
    },
    {
        "name": "wf_many_big",
        "description": "d",
        "parameters": params(n="integer", size="integer"),
        "steps": [
            {
                "id": "a",
                "type": "for_each",
                "tool": "hostile_big",
                "over": "{{ range(params.n)|list }}",
                "arguments": {"bytes": "{{ params.size }}"},
                "max_parallel": 2,
            }
        ],
    },
    {
        "name": "wf_big_output",
        "description": "d",
        "parameters": params(n="integer"),
        "steps": [echo("small")],
        "output": {"text": "{{ 'x' * params.n }}"},
    },
    {
        "name": "wf_secret",
        "description": "d",
        "parameters": params(token="string"),
        "steps": [
            {"id": "a", "tool": "notes_slow_echo", "arguments": {"message": "x", "seconds": "{{ params.token }}"}}
        ],
    },
    {
        "name": "wf_types",
        "description": "d",
        "parameters": {**params(n="integer"), "additionalProperties": False},
        "steps": [echo("x")],
    },
    {
        "name": "ask",
        "description": "Asks its user for a name.",
        "steps": [
            {
                "id": "q",
                "type": "elicitation",
                "message": "Name?",
                "requested_schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            }
        ],
    },
]


def hostile() -> dict[str, Any]:
    return {"name": "hostile", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "hostile_server.py")]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflow-limits")
    config = {
        "backends": [demo_backend("notes"), hostile()],
        "workflows": WORKFLOWS,
        "limits": {"max_result_bytes": CAP, "max_pending_calls_per_caller": 2},
        "server": {"max_pending_calls": 6},
        "timeouts": {"input": 60},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def test_json_nested_too_deeply_fails_the_step_not_the_gateway(gateway: Gateway) -> None:
    deep = "[" * 5000 + "]" * 5000
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            parsed = await client.call_tool("wf_fromjson", {"s": deep})
            over = await client.call_tool("wf_over", {"s": deep})
    assert parsed.is_error and "step 'a' failed: arguments.message: RecursionError: nested too deeply" in text(parsed)
    assert over.is_error and "step 'a' failed: over: a JSON array nested too deeply" in text(over)


async def test_templates_asking_for_unbounded_work_fail_and_the_gateway_keeps_answering(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            center = await client.call_tool("wf_center", {"s": "a", "w": 1_000_000_000})
            power = await client.call_tool("wf_pow", {"base": 9, "e": 10})
            async with anyio.create_task_group() as group:
                loops: list[types.CallToolResult] = []

                async def nested_loops() -> None:
                    loops.append(await client.call_tool("wf_loops", {"n": 100_000}))

                group.start_soon(nested_loops)
                await anyio.sleep(0.5)  # the loops run in a worker thread meanwhile; the event loop is free
                health = await anyio.to_thread.run_sync(lambda: httpx2.get(f"{gateway.base}/healthz", timeout=30))
                other = await client.call_tool("notes_whoami", {})
    assert center.is_error and "center(width): 1000000000 is past the largest size" in text(center)
    assert power.is_error and "SecurityError: the power has more than 200,000 bits" in text(power)
    assert health.status_code == 200 and not other.is_error
    assert loops[0].is_error and "workflow 'wf_loops' failed: " in text(loops[0])


async def test_a_workflow_s_outputs_are_held_to_max_result_bytes(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            small = await client.call_tool("wf_many_big", {"n": 3, "size": 1000})
            many = await client.call_tool("wf_many_big", {"n": 40, "size": 30_000})
            output = await client.call_tool("wf_big_output", {"n": 200_000})
    assert not small.is_error, text(small)
    assert many.is_error
    assert f"the workflow's step outputs come to more than {CAP:,} bytes (limits.max_result_bytes)" in text(many)
    assert output.is_error
    assert (
        f"workflow 'wf_big_output' returned a result larger than {CAP:,} bytes (limits.max_result_bytes); "
        "it was not passed on"
    ) in text(output)


async def test_a_failing_run_logs_names_not_argument_values(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("wf_secret", {"token": "sk-live-0123456789abcdef"})
    assert result.is_error and "sk-live-0123456789abcdef" in text(result)  # the client is told what it sent
    log = gateway.output()
    assert "workflow wf_secret failed at step a" in log
    assert "sk-live-0123456789abcdef" not in log


async def test_every_argument_problem_reaches_the_client(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("wf_types", {"n": "3", "extra": 1})
    assert result.is_error
    assert "field 'n'" in text(result) and "field 'extra'" in text(result)


def as_caller(gateway: Gateway, credential: str, address: str = "127.0.0.1") -> Client:
    """A 2026-07-28 client with a credential, from `address`: unverified (the gateway checks no credential here),
    so budgets key it by its address, as an anonymous one."""
    transport_ = httpx2.AsyncHTTPTransport(local_address=address)
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"}, transport=transport_)
    transport = streamable_http_client(gateway.url, http_client=http)
    return Client(transport, mode="auto", elicitation_callback=unanswered)  # type: ignore[arg-type]


async def unanswered(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    raise AssertionError("the test reads the question itself (allow_input_required)")


async def asked(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("ask", {}, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult), result
    return result


async def test_elicitation_runs_count_against_the_callers_pending_calls(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with as_caller(gateway, "alice-key") as alice, as_caller(gateway, "bob-key", "127.0.0.2") as bob:
            assert alice.protocol_version == "2026-07-28"
            first = await asked(alice)  # alice's runs now wait for her answers: the two she may hold
            await asked(alice)
            await asked(alice)  # past her bound: her oldest run ends (she cannot say she gave up on it)
            with pytest.raises(MCPError) as refused:
                await alice.session.call_tool(
                    "ask", {}, input_responses={}, request_state=first.request_state, allow_input_required=True
                )
            await asked(bob)  # bob's budget is his own
    assert "workflow run that expired" in str(refused.value)
    assert "limits.max_pending_calls_per_caller" in str(refused.value)


async def test_a_workflow_re_entering_itself_through_call_tool_is_refused_and_the_gateway_stops(
    tmp_path: Path,
) -> None:
    chain = [
        {
            "name": f"w{n}",
            "description": f"level {n}",
            "steps": [{"id": "a", "tool": "call_tool", "arguments": {"tool_name": f"w{n + 1}", "arguments": {}}}],
        }
        for n in range(1, 5)
    ]
    chain.append({"name": "w5", "description": "level 5", "steps": [echo("bottom")]})
    dispatch = {
        "name": "dispatch",
        "description": "Calls the tool it is told to, with its own arguments.",
        "parameters": params(t="string"),
        "steps": [
            {"id": "a", "tool": "call_tool", "arguments": {"tool_name": "{{ params.t }}", "arguments": "{{ params }}"}}
        ],
    }
    config = {
        "backends": [demo_backend("notes")],
        "workflows": [dispatch, *chain],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
    }
    with running_gateway(write_config(tmp_path, config)) as running:
        with anyio.fail_after(120):
            async with Client(running.url) as client:
                itself = await client.call_tool("call_tool", {"tool_name": "dispatch", "arguments": {"t": "dispatch"}})
                deep = await client.call_tool("call_tool", {"tool_name": "w1", "arguments": {}})
                shallow = await client.call_tool("call_tool", {"tool_name": "w2", "arguments": {}})
        assert itself.is_error
        assert (
            "workflow 'dispatch' is already running in this call chain (dispatch -> dispatch): "
            "a workflow may not call itself"
        ) in text(itself)
        assert deep.is_error
        assert "workflows nest at most 4 deep, and this call would be deeper (w1 -> w2 -> w3 -> w4 -> w5)" in text(deep)
        assert not shallow.is_error, text(shallow)
        running.proc.send_signal(signal.SIGTERM)
        try:
            running.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway did not stop on SIGTERM")
