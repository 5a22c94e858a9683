"""Workflow results and answers over real transports: a step's image reaches the client (server-everything's
get-tiny-image), an elicitation answer that does not fit its form fails the asking step, and `vmcp validate`
refuses step settings that the step's type never reads."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ASK_NAME = {
    "id": "q",
    "type": "elicitation",
    "message": "Your name?",
    "requested_schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
}
WORKFLOWS: list[dict[str, Any]] = [
    {"name": "picture", "description": "The tiny image.", "steps": [{"id": "pic", "tool": "ev_get-tiny-image"}]},
    {
        "name": "picture_kind",
        "description": "What kind of image the tiny image is.",
        "steps": [{"id": "pic", "tool": "ev_get-tiny-image"}],
        "output": {"kind": "{{ (steps.pic.content | selectattr('type', 'eq', 'image') | first).mimeType }}"},
    },
    {
        "name": "greet",
        "description": "Ask a name and echo a greeting.",
        "steps": [ASK_NAME, {"id": "hello", "tool": "ev_echo", "depends_on": ["q"], "arguments": {"message": "hi"}}],
    },
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("wf20")
    config = {
        "backends": [{"name": "ev", "command": str(NODE_BIN / "mcp-server-everything")}],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "workflows": WORKFLOWS,
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_workflow_without_output_passes_on_its_last_step_s_image(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("picture", {})
    assert not result.is_error, text(result)
    assert [block.type for block in result.content] == ["text", "image", "text"]
    image = result.content[1]
    assert isinstance(image, types.ImageContent) and image.mime_type == "image/png" and len(image.data) > 100


async def test_templates_read_a_step_s_non_text_content(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("picture_kind", {})
    assert not result.is_error, text(result)
    assert result.structured_content == {"kind": "image/png"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # 2025-11-25: elicitation/create; 2026-07-28: InputRequiredResult
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({}, "content: 'name' is a required property"),
        ({"name": 5}, "content.name: 5 is not of type 'string'"),
    ],
)
async def test_an_answer_that_does_not_fit_the_form_fails_the_asking_step(
    gateway: Gateway, mode: str, content: dict[str, Any], reason: str
) -> None:
    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content=content)

    async with Client(gateway.url, mode=mode, elicitation_callback=elicitation) as client:  # type: ignore[arg-type]
        result = await client.call_tool("greet", {})
    assert result.is_error
    assert f"step 'q' failed: the user's answer does not fit requested_schema: {reason}" in text(result)
    assert "steps: q: failed, hello: pending" in text(result)  # never called


def validate(tmp_path: Path, steps: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, {"backends": [], "workflows": [{"name": "w", "description": "d", "steps": steps}]})
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )


def test_validate_warns_of_settings_a_step_never_reads_and_still_loads_them(tmp_path: Path) -> None:
    steps = [
        {"id": "a", "tool": "t", "max_iterations": 5, "on_error": {"action": "continue", "retries": 2}},
        {**ASK_NAME, "on_error": "retry"},
    ]
    done = validate(tmp_path, steps)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output  # a config that loaded before still loads
    for line in [
        "warning: workflows[0].steps[0].max_iterations: `max_iterations` does nothing in a tool step",
        "warning: workflows[0].steps[0].on_error.retries: `retries` is read only with `action: retry`",
        "warning: workflows[0].steps[1].on_error.action: an elicitation step is not retried (a person answered)",
    ]:
        assert line in output, output


def test_validate_refuses_a_form_that_is_no_json_schema(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "string", "minLength": "x"}}}
    done = validate(tmp_path, [{**ASK_NAME, "id": "b", "requested_schema": schema}])
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "workflows[0].steps[0].requested_schema.properties.n.minLength: not a valid JSON Schema:" in output
