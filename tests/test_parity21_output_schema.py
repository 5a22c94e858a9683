"""A workflow's `output_schema` (ToolHive's composite-tool `output` properties): listed as the tool's
`outputSchema`, every run's output checked against it, and a definition no run could satisfy refused at load.
A real gateway over the real demo backend, driven by the SDK's client (which itself checks structured content
against a listed output schema)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.anyio]

NOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "description": "The note's title"},
        "chars": {"type": "integer", "description": "Characters saved"},
        "saved": {"type": "string"},
    },
    "required": ["title", "chars", "saved"],
}


def _workflow(name: str, output: dict[str, Any] | None, schema: dict[str, Any]) -> dict[str, Any]:
    workflow: dict[str, Any] = {
        "name": name,
        "description": f"Save a note and report it ({name}).",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
        "steps": [
            {"id": "save", "tool": "notes_save_note", "arguments": {"title": "{{ params.title }}", "text": "hi"}}
        ],
        "output_schema": schema,
    }
    if output is not None:
        workflow["output"] = output
    return workflow


WORKFLOWS = [
    _workflow(
        "typed_note",
        {
            "title": "{{ params.title }}",
            "chars": "{{ params.title | length }}",
            "saved": "{{ steps.save.output.result }}",
        },
        NOTE_SCHEMA,
    ),
    # `chars` renders as a string: the schema wants an integer.
    _workflow(
        "mistyped_note",
        {"title": "{{ params.title }}", "chars": "{{ params.title }} chars", "saved": "{{ steps.save.output.result }}"},
        NOTE_SCHEMA,
    ),
    # No `output`: the last step's output, a for_each's list, is no object.
    {
        **_workflow("bare_note", None, {"type": "object", "properties": {}}),
        "steps": [
            {
                "id": "save",
                "type": "for_each",
                "over": "{{ [params.title] }}",
                "tool": "notes_save_note",
                "arguments": {"title": "{{ item }}", "text": "hi"},
            }
        ],
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("parity21")
    config = write_config(directory, {"backends": [demo_backend("notes")], "workflows": WORKFLOWS})
    with running_gateway(config) as running:
        yield running


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_output_schema_is_listed_as_the_tools_output_schema(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert tools["typed_note"].output_schema == NOTE_SCHEMA


async def test_output_fitting_its_schema_reaches_the_client_as_structured_content(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await client.list_tools()  # the client checks structured content against the schema it listed
        result = await client.call_tool("typed_note", {"title": "Ada"})
    assert not result.is_error, _text(result)
    assert result.structured_content == {"title": "Ada", "chars": 3, "saved": "saved note 'Ada' (2 characters)"}


async def test_output_breaking_its_schema_fails_the_run_naming_the_field(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await client.list_tools()
        result = await client.call_tool("mistyped_note", {"title": "Ada"})
    assert result.is_error
    message = _text(result)
    assert "workflow 'mistyped_note' failed: its output does not match its output_schema" in message
    assert "chars" in message and "integer" in message, message


async def test_last_step_output_that_is_no_object_fails_a_schema_that_wants_one(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await client.list_tools()
        result = await client.call_tool("bare_note", {"title": "Ada"})
    assert result.is_error
    assert "its output does not match its output_schema: it is an array, not an object" in _text(result)


def _validate(tmp_path: Path, workflow: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow]})
    command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_validate_refuses_an_output_schema_no_run_can_satisfy(tmp_path: Path) -> None:
    output = {"title": "{{ params.title }}", "extra": "x"}
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title", "missing"]}
    done = _validate(tmp_path, _workflow("w", output, {**schema, "additionalProperties": False}))
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "workflows[0].output_schema.required: 'missing' is not a key of `output`" in said, said
    assert "workflows[0].output.extra: not among output_schema.properties" in said, said


def test_validate_refuses_an_output_schema_that_is_not_an_object_schema(tmp_path: Path) -> None:
    done = _validate(tmp_path, _workflow("w", {"a": "1"}, {"type": "array"}))
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "workflows[0].output_schema.type: a tool's output schema must be of type 'object'" in said, said
