"""Workflows in the real `vmcp serve` over real backends, driven by a real client: memory (entities, then
relations, then the graph), time (a for_each), filesystem (write then read), a flaky backend (retries),
a demo backend (cancellation, timeouts); progress; a template failing at run time; find_tool."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import EXAMPLES, NODE_BIN, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "remember_team",
        "description": "Record two people and that they work together in the memory graph, then read it back.",
        "parameters": {
            "type": "object",
            "properties": {"lead": {"type": "string"}, "member": {"type": "string", "default": "Grace"}},
            "required": ["lead"],
        },
        "steps": [
            {
                "id": "people",
                "tool": "memory_create_entities",
                "arguments": {
                    "entities": [
                        {"name": "{{ params.lead }}", "entityType": "person", "observations": ["leads"]},
                        {"name": "{{ params.member }}", "entityType": "person", "observations": ["joined"]},
                    ]
                },
            },
            {
                "id": "relate",
                "tool": "memory_create_relations",
                "depends_on": ["people"],
                "arguments": {
                    "relations": [
                        {"from": "{{ params.lead }}", "to": "{{ params.member }}", "relationType": "works_with"}
                    ]
                },
            },
            {"id": "graph", "tool": "memory_read_graph", "depends_on": ["relate"]},
        ],
        "output": {
            "people": "{{ steps.graph.output.entities | map(attribute='name') | sort | list }}",
            "relations": "{{ steps.graph.output.relations }}",
        },
    },
    {
        "name": "world_clock",
        "description": "Convert one time of day from a zone into several other zones.",
        "parameters": {
            "type": "object",
            "properties": {
                "time": {"type": "string", "default": "09:00"},
                "targets": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["targets"],
        },
        "steps": [
            {
                "id": "convert",
                "type": "for_each",
                "tool": "time_convert_time",
                "over": "{{ params.targets }}",
                "item": "zone",
                "max_parallel": 2,
                "arguments": {"source_timezone": "UTC", "time": "{{ params.time }}", "target_timezone": "{{ zone }}"},
            }
        ],
        "output": {"times": "{{ steps.convert.output | map(attribute='target') | map(attribute='datetime') | list }}"},
    },
    {
        "name": "write_and_read",
        "description": "Write a file, then read it back.",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}, "body": {"type": "string"}}},
        "steps": [
            {
                "id": "write",
                "tool": "filesystem_write_file",
                "arguments": {"path": "{{ params.name }}", "content": "{{ params.body }}"},
            },
            {
                "id": "read",
                "tool": "filesystem_read_text_file",
                "depends_on": ["write"],
                "arguments": {"path": "{{ params.name }}"},
            },
        ],
        "output": {"written": "{{ steps.write.status }}", "read_back": "{{ steps.read.output.content }}"},
    },
    {
        "name": "patient_fetch",
        "description": "Fetch a value from a flaky service, retrying with backoff.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
        "steps": [
            {
                "id": "fetch",
                "tool": "flaky_unreliable_fetch",
                "arguments": {"key": "{{ params.key }}"},
                "on_error": {"action": "retry", "retries": 3, "delay": 0.05},
            }
        ],
    },
    {
        "name": "bad_template",
        "description": "Reads a field its step never returns.",
        "steps": [
            {"id": "who", "tool": "notes_whoami"},
            {
                "id": "use",
                "tool": "notes_save_note",
                "depends_on": ["who"],
                "arguments": {"title": "{{ steps.who.output.nope.deeper }}", "text": "x"},
            },
        ],
    },
    {
        "name": "slow_pair",
        "description": "Two slow echoes side by side.",
        "parameters": {"type": "object", "properties": {"seconds": {"type": "number", "default": 0.5}}},
        "timeout": 20,
        "steps": [
            {"id": "one", "tool": "notes_slow_echo", "arguments": {"message": "1", "seconds": "{{ params.seconds }}"}},
            {"id": "two", "tool": "notes_slow_echo", "arguments": {"message": "2", "seconds": "{{ params.seconds }}"}},
            {
                "id": "both",
                "tool": "notes_save_note",
                "depends_on": ["one", "two"],
                "arguments": {"title": "pair", "text": "{{ steps.one.output.result }}{{ steps.two.output.result }}"},
            },
        ],
    },
    {
        "name": "too_slow",
        "description": "Times out.",
        "timeout": 0.5,
        "steps": [{"id": "wait", "tool": "notes_slow_echo", "arguments": {"message": "late", "seconds": 30}}],
    },
]


WORKFLOWS.append(
    {
        "name": "titled_note",
        "description": "Ask the user for a title, then save a note under it.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "steps": [
            {"id": "who", "tool": "notes_whoami"},
            {
                "id": "ask",
                "type": "elicitation",
                "message": "Title for the note '{{ params.text }}'?",
                "requested_schema": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}},
                    "required": ["title"],
                },
                "on_cancel": "continue",
            },
            {
                "id": "save",
                "tool": "notes_save_note",
                "depends_on": ["ask", "who"],
                "condition": "{{ steps.ask.output.action == 'accept' }}",
                "arguments": {"title": "{{ steps.ask.output.content.title }}", "text": "{{ params.text }}"},
                "default_result": "not saved",
            },
        ],
        "output": {"action": "{{ steps.ask.output.action }}", "saved": "{{ steps.save.output }}"},
    }
)


WORKFLOWS.append(
    {"name": "ghost", "description": "Calls a tool nobody serves.", "steps": [{"id": "boo", "tool": "nowhere_tool"}]}
)


def backends(tmp: Path) -> list[dict[str, Any]]:
    (tmp / "files").mkdir(exist_ok=True)
    return [
        {
            "name": "memory",
            "command": str(NODE_BIN / "mcp-server-memory"),
            "env": {"MEMORY_FILE_PATH": str(tmp / "memory.jsonl")},
        },
        {"name": "time", "command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
        {"name": "filesystem", "command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(tmp / "files")]},
        {"name": "flaky", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "flaky_server.py")]},
        demo_backend("notes"),
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflows")
    config = {"backends": backends(directory), "workflows": WORKFLOWS}
    with running_gateway(write_config(directory, config)) as running:
        running.files = directory / "files"  # type: ignore[attr-defined]
        yield running


async def test_workflows_are_listed_with_their_parameters_and_derived_annotations(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    clock = tools["world_clock"]
    assert clock.input_schema["required"] == ["targets"]
    assert clock.annotations is not None and clock.annotations.read_only_hint is True
    write = tools["write_and_read"].annotations
    assert write is not None and write.read_only_hint is False


async def test_memory_entities_then_relations_then_the_graph(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("remember_team", {"lead": "Ada"})
    assert not result.is_error, text(result)
    assert result.structured_content == {
        "people": ["Ada", "Grace"],
        "relations": [{"from": "Ada", "to": "Grace", "relationType": "works_with"}],
    }


async def test_time_conversions_in_a_for_each(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("world_clock", {"targets": ["Asia/Tokyo", "America/New_York", "Europe/Paris"]})
    assert not result.is_error, text(result)
    times = [datetime.fromisoformat(t) for t in result.structured_content["times"]]  # type: ignore[index]
    zones = ["Asia/Tokyo", "America/New_York", "Europe/Paris"]
    assert [t.astimezone(UTC).strftime("%H:%M") for t in times] == ["09:00"] * 3
    assert [t.utcoffset() for t in times] == [
        t.astimezone(ZoneInfo(z)).utcoffset() for t, z in zip(times, zones, strict=True)
    ]


async def test_filesystem_write_then_read(gateway: Gateway) -> None:
    body = "hello from a workflow, grüße aus 東京"
    async with Client(gateway.url) as client:
        result = await client.call_tool("write_and_read", {"name": "note.txt", "body": body})
    assert not result.is_error, text(result)
    assert result.structured_content == {"written": "ok", "read_back": body}
    assert body in text(result)  # the output's JSON text keeps non-ASCII as written, not as \u escapes
    assert (gateway.files / "note.txt").read_text(encoding="utf-8") == body  # type: ignore[attr-defined]


async def test_a_failing_step_is_retried_until_the_backend_answers(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("patient_fetch", {"key": "retried"})
        assert not result.is_error, text(result)
        assert result.structured_content == {"key": "retried", "value": "value of retried", "attempt": 3}
        count = await client.call_tool("flaky_call_count", {"key": "retried"})
        assert text(count) == "3"


async def test_a_template_failing_at_run_time_names_the_step_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("bad_template", {})
        assert result.is_error
        message = text(result)
        assert message.startswith("workflow 'bad_template' failed: step 'use' failed: arguments.title: UndefinedError:")
        assert "steps: who: ok, use: failed" in message
        after = await client.call_tool("notes_whoami", {})
        assert not after.is_error


async def test_bad_arguments_are_refused_before_any_step(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("remember_team", {"member": "no lead"})
    assert result.is_error and "field 'lead': required but missing" in text(result)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_reports_each_finished_step(gateway: Gateway, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(gateway.url, mode=mode) as client:  # type: ignore[arg-type]
        result = await client.call_tool("slow_pair", {"seconds": 0.1}, progress_callback=on_progress)
    assert not result.is_error, text(result)
    assert [p for p, _, _ in seen] == [1.0, 2.0, 3.0] and {t for _, t, _ in seen} == {3.0}
    assert seen[-1][2] == "step both: ok"


async def test_the_workflow_timeout_holds_and_cancels_the_step(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("too_slow", {})
        assert result.is_error
        assert "workflow 'too_slow' failed: timed out after 0.5s (still running: wait)" in text(result)
        assert await cancelled_at_the_backend(client) >= 1


async def test_a_client_cancelling_mid_run_reaches_the_running_step(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        before = (await whoami(client))["slow_echo_cancelled"]
        with anyio.move_on_after(0.5):
            await client.call_tool("slow_pair", {"seconds": 30})
        assert await cancelled_at_the_backend(client, more_than=before + 1) >= before + 2


async def whoami(client: Client) -> dict[str, Any]:
    result = await client.call_tool("notes_whoami", {})
    return result.structured_content or json.loads(text(result))


async def cancelled_at_the_backend(client: Client, more_than: int = 0) -> int:
    deadline = time.monotonic() + 30
    count = 0
    while time.monotonic() < deadline:
        count = (await whoami(client))["slow_echo_cancelled"]
        if count >= max(more_than, 1):
            break
        await anyio.sleep(0.1)
    return int(count)


async def test_with_the_optimizer_on_find_tool_finds_a_workflow_that_tools_list_hides(tmp_path: Path) -> None:
    config = {
        "backends": backends(tmp_path)[1:2],
        "workflows": [WORKFLOWS[1]],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
    }
    with running_gateway(write_config(tmp_path, config)) as running, anyio.fail_after(60):
        async with Client(running.url) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            assert "world_clock" not in listed and "find_tool" in listed
            names: list[str] = []
            while not names:  # the index fills in once the backends have connected
                found = await client.call_tool(
                    "find_tool", {"query": "convert a time of day into other zones", "limit": 3}
                )
                names = [t["name"] for t in json.loads(text(found))["tools"]]
                await anyio.sleep(0.2)
            assert "world_clock" in names, names
            result = await client.call_tool(
                "call_tool", {"tool_name": "world_clock", "arguments": {"targets": ["Asia/Tokyo"]}}
            )
            assert not result.is_error, text(result)


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # 2025-11-25: elicitation/create; 2026-07-28: InputRequiredResult
async def test_an_elicitation_step_accepted_declined_and_cancelled(gateway: Gateway, mode: str) -> None:
    asked: list[str] = []
    replies = iter(
        [
            types.ElicitResult(action="accept", content={"title": f"from {mode}"}),
            types.ElicitResult(action="decline"),
            types.ElicitResult(action="cancel"),
        ]
    )

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        asked.append(params.message)
        return next(replies)

    async with Client(gateway.url, mode=mode, elicitation_callback=elicitation) as client:  # type: ignore[arg-type]
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        accepted = await client.call_tool("titled_note", {"text": "hello"})
        assert not accepted.is_error, text(accepted)
        assert accepted.structured_content == {
            "action": "accept",
            "saved": {"result": f"saved note 'from {mode}' (5 characters)"},
        }
        declined = await client.call_tool("titled_note", {"text": "hello"})
        assert declined.is_error and "step 'ask' failed: the user chose 'decline'" in text(declined)
        cancelled = await client.call_tool("titled_note", {"text": "hello"})
        assert cancelled.structured_content == {"action": "cancel", "saved": "not saved"}
    assert asked == ["Title for the note 'hello'?"] * 3


async def test_a_client_that_cannot_be_asked_gets_an_error_naming_the_step(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("titled_note", {"text": "hello"})
    assert result.is_error and "step 'ask' failed: this run cannot ask its client anything" in text(result)


async def test_a_step_naming_a_tool_nothing_serves_is_logged_at_start_and_fails_at_run_time(gateway: Gateway) -> None:
    assert (
        "workflows[8].steps[0].tool: unknown tool 'nowhere_tool' (no backend or workflow serves it now)"
        in gateway.output()
    )
    async with Client(gateway.url) as client:
        result = await client.call_tool("ghost", {})
    assert result.is_error and "step 'boo' failed: UnknownTool: Unknown tool: 'nowhere_tool'" in text(result)
