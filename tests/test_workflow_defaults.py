"""What a workflow step's config means as written: `default_result: null` against no `default_result` at all,
in a real gateway (inline and discovered backends: the latter dumps and validates the config again), and
`${VAR}` in a step's arguments, which nothing expands, warned of by `vmcp serve` and `vmcp workflow run`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import yaml
from mcp import Client

from tests.support import ROOT, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# `notes_search_notes` without its required `query` is refused by the gateway's schema check: a step that fails
# the same way every time, whatever the machine's speed.
FAILING = {"tool": "notes_search_notes", "arguments": {}, "on_error": "continue"}
OUTPUT = {
    "first": "{{ steps.first.output }}",
    "first_status": "{{ steps.first.status }}",
    "then_status": "{{ steps.then.status }}",
}


def soft_failure(name: str, **first: Any) -> dict[str, Any]:
    """`first` fails under `on_error: continue` (with `first`'s extra fields); `then` depends on it."""
    return {
        "name": name,
        "description": f"{name}: a step that fails, and one that depends on it",
        "steps": [
            {"id": "first", **FAILING, **first},
            {"id": "then", "tool": "notes_whoami", "depends_on": ["first"]},
        ],
        "output": OUTPUT,
    }


WORKFLOWS = [
    soft_failure("null_default", default_result=None),
    soft_failure("no_default"),
    soft_failure("value_default", default_result={"v": 0}),
    {
        # `middle` is skipped because `broken` failed without a default; its explicit null stands in for it.
        "name": "null_default_of_a_skipped_step",
        "description": "a failure without a default, a skipped step with a null one, and a step after it",
        "steps": [
            {"id": "broken", **FAILING},
            {"id": "middle", "tool": "notes_whoami", "depends_on": ["broken"], "default_result": None},
            {"id": "last", "tool": "notes_whoami", "depends_on": ["middle"]},
        ],
        "output": {
            "middle": "{{ steps.middle.output }}",
            "middle_status": "{{ steps.middle.status }}",
            "last_status": "{{ steps.last.status }}",
        },
    },
    {
        "name": "condition_false",
        "description": "a step whose condition is false, with an explicit null default",
        "steps": [{"id": "maybe", "tool": "notes_whoami", "condition": "{{ false }}", "default_result": None}],
        "output": {"maybe": "{{ steps.maybe.output }}", "status": "{{ steps.maybe.status }}"},
    },
]


@pytest.fixture(scope="module", params=["inline", "discovered"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp(f"defaults-{request.param}")
    config: dict[str, Any] = {"workflows": WORKFLOWS}
    if request.param == "inline":
        config["backends"] = [demo_backend("notes")]
    else:  # merged in after validation: the config is dumped and validated again (config/loading.py)
        notes = demo_backend("notes")
        client = {"mcpServers": {"notes": {"command": notes["command"], "args": notes["args"]}}}
        (directory / "claude_desktop_config.json").write_text(json.dumps(client), encoding="utf-8")
        config["discovery"] = {"mode": "discovered", "path": "claude_desktop_config.json"}
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def run(gateway: Gateway, name: str) -> dict[str, Any]:
    async with Client(gateway.url) as client:
        result = await client.call_tool(name, {})
    assert not result.is_error, result
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    output: dict[str, Any] = result.structured_content or json.loads(text)
    return output


async def test_an_explicit_null_default_result_stands_in_for_a_failed_step(gateway: Gateway) -> None:
    assert await run(gateway, "null_default") == {"first": None, "first_status": "failed", "then_status": "ok"}


async def test_without_a_default_result_the_dependants_of_a_failed_step_are_skipped(gateway: Gateway) -> None:
    assert await run(gateway, "no_default") == {"first": None, "first_status": "failed", "then_status": "skipped"}


async def test_a_default_result_value_stands_in_as_before(gateway: Gateway) -> None:
    assert await run(gateway, "value_default") == {"first": {"v": 0}, "first_status": "failed", "then_status": "ok"}


async def test_a_skipped_step_with_an_explicit_null_default_lets_its_dependants_run(gateway: Gateway) -> None:
    output = await run(gateway, "null_default_of_a_skipped_step")
    assert output == {"middle": None, "middle_status": "skipped", "last_status": "ok"}


async def test_a_step_skipped_by_its_condition_yields_its_null_default(gateway: Gateway) -> None:
    assert await run(gateway, "condition_false") == {"maybe": None, "status": "skipped"}


# --- `${VAR}` in a step's arguments: not expanded, warned of --------------------------------------------------

ENV_WORKFLOW = {
    "name": "post_with_token",
    "description": "Saves a note whose text holds a ${VAR} reference the user expected to be expanded.",
    "steps": [
        {"id": "save", "tool": "notes_save_note", "arguments": {"title": "t", "text": "Bearer ${NOTES_TOKEN}"}},
        {  # never runs: only its warning is of interest, with a nested path
            "id": "later",
            "tool": "notes_save_note",
            "condition": "{{ false }}",
            "arguments": {"title": "t", "meta": {"auth": ["${OTHER}"]}},
        },
    ],
}
WARNING = (
    "workflow 'post_with_token' step 'save' argument 'text' contains ${NOTES_TOKEN}: environment variables are "
    "not expanded in workflow steps"
)
NESTED_WARNING = "workflow 'post_with_token' step 'later' argument 'meta.auth[0]' contains ${OTHER}:"


def env_config(directory: Path) -> Path:
    return write_config(directory, {"backends": [demo_backend("notes")], "workflows": [ENV_WORKFLOW]})


def test_serve_warns_at_start_of_a_var_reference_in_workflow_arguments(tmp_path: Path) -> None:
    with running_gateway(env_config(tmp_path), env={"NOTES_TOKEN": "set-but-not-used"}) as gateway:
        log = gateway.output()
    [line] = [line for line in log.splitlines() if "argument 'text' contains ${NOTES_TOKEN}" in line]
    assert "WARNING" in line and WARNING in line and "{{ params.notes_token }}" in line, line
    assert NESTED_WARNING in log
    assert "set-but-not-used" not in log  # the warning names the variable, never its value


def test_workflow_run_warns_and_passes_the_reference_unexpanded(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "post_with_token", "-c", str(env_config(tmp_path))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert WARNING in done.stderr and NESTED_WARNING in done.stderr
    assert "(21 characters)" in done.stdout  # the note's text is "Bearer ${NOTES_TOKEN}", as written


def test_validate_warns_of_a_var_reference_in_workflow_arguments_and_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"workflows": [ENV_WORKFLOW]}), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert WARNING in done.stderr and NESTED_WARNING in done.stderr
    assert "valid" in done.stdout


def test_a_workflow_without_var_references_draws_no_warning(tmp_path: Path) -> None:
    # Templates and a `$` that is no reference are not warned of.
    plain = {
        **ENV_WORKFLOW,
        "steps": [{"id": "save", "tool": "notes_save_note", "arguments": {"title": "$5", "text": "{{ 'x' }} ${ }"}}],
    }
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"backends": [demo_backend("notes")], "workflows": [plain]}), encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "post_with_token", "-c", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "not expanded" not in done.stderr
