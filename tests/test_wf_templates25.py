"""Template failures of every kind end a run as a step's (or the output's) failure, and arithmetic on huge integers
is refused before it runs, as a real client and `vmcp workflow run` see them from real processes over the demo
backend: a filter raising outside Jinja's own errors (`dictsort` of a list the client sent) in a step's arguments,
`over`, `condition` or the workflow's `output`; a non-finite float constant (Jinja folded it into code naming
`inf`); `//`, `%` and `/` on integers past `MAX_DIVISION_BITS` (each such division held the GIL for ~0.4 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.workflows.templates import MAX_DIVISION_BITS, TemplateError, render_value

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TAGS = {"type": "object", "properties": {"tags": {"description": "tags, as the client sends them"}}}
SORTED = "{{ params.tags | dictsort }}"
# Past the bound by a little (an exponent past 1,000 is refused by a bound of its own).
POWER = MAX_DIVISION_BITS // 1000 + 1
HUGE = f"((2 ** 1000) ** {POWER})"
HUGE_BITS = 1000 * POWER + 1
WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "tags_in_output",
        "description": "The client's tags, sorted, in the output.",
        "parameters": TAGS,
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"tags": SORTED},
    },
    {
        "name": "tags_in_condition",
        "description": "A condition over the client's tags, beside a slow sibling step.",
        "parameters": TAGS,
        "steps": [
            {"id": "who", "tool": "d_whoami", "condition": "{{ params.tags | dictsort | length > 0 }}"},
            {"id": "sibling", "tool": "d_slow_echo", "arguments": {"message": "sibling", "seconds": 60}},
        ],
    },
    {
        "name": "tags_in_condition_continue",
        "description": "The same condition under on_error: continue: the sibling's output is the result.",
        "parameters": TAGS,
        "steps": [
            {
                "id": "who",
                "tool": "d_whoami",
                "condition": "{{ params.tags | dictsort | length > 0 }}",
                "on_error": "continue",
            },
            {"id": "sibling", "tool": "d_slow_echo", "arguments": {"message": "sibling", "seconds": 0}},
        ],
    },
    {
        "name": "tags_in_arguments",
        "description": "The client's tags, sorted, as a step's argument.",
        "parameters": TAGS,
        "steps": [{"id": "echo", "tool": "d_slow_echo", "arguments": {"message": SORTED, "seconds": 0}}],
    },
    {
        "name": "tags_in_over",
        "description": "A for_each over the client's tags, sorted.",
        "parameters": TAGS,
        "steps": [{"id": "each", "type": "for_each", "tool": "d_whoami", "over": SORTED}],
    },
    {
        "name": "infinite_constants",
        "description": "Non-finite float constants, which Jinja folds at compile time.",
        "steps": [{"id": "who", "tool": "d_whoami", "condition": "{{ 1e999 > 10 ** 300 }}"}],
        "output": {"inf": "{{ 'inf' | float == 1e999 }}", "nan": "{{ ('nan' | float) != ('nan' | float) }}"},
    },
    {
        "name": "infinite_output",
        "description": "A non-finite float as an output's value, which JSON cannot hold.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"big": "{{ 1e999 }}"},
    },
    {
        "name": "huge_division",
        "description": "Divides an integer past the bound.",
        "steps": [{"id": "divide", "tool": "d_slow_echo", "arguments": {"message": f"{{{{ {HUGE} // 3 }}}}"}}],
    },
    {
        "name": "huge_remainder",
        "description": "A remainder of an integer past the bound.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"rest": f"{{{{ {HUGE} % 7 }}}}"},
    },
    {
        "name": "huge_round",
        "description": "Rounds an integer past the bound to thousands of tens (a division).",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"rounded": f"{{{{ {HUGE} | round(-3000) | int > 0 }}}}"},
    },
    {
        "name": "huge_true_division",
        "description": "Divides an integer past the bound into a float, in a loop.",
        "steps": [
            {
                "id": "divide",
                "tool": "d_slow_echo",
                "arguments": {"message": f"{{% for i in range(3) %}}{{{{ {HUGE} / (i + 1) }}}}{{% endfor %}}"},
            }
        ],
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wf-templates25")


@pytest.fixture(scope="module")
def config(directory: Path) -> Path:
    settings = {
        "backends": [demo_backend("d")],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "workflows": WORKFLOWS,
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "flush_interval": 0}},
    }
    return write_config(directory, settings)


@pytest.fixture(scope="module")
def gateway(config: Path) -> Iterator[Gateway]:
    with running_gateway(config) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(gateway: Gateway, name: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            return await client.call_tool(name, arguments or {})


RUN_ENDS = ("workflow_completed", "workflow_failed", "workflow_timed_out")


def run_ends(audit: Path, workflow: str, count: int) -> list[str]:
    """The types of the audit events that ended the runs of `workflow`, once `count` are written (the writer is a
    thread)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        ends = [e["type"] for e in events if e["type"] in RUN_ENDS and e["target"].get("workflow_name") == workflow]
        if len(ends) >= count:
            return ends
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} ends of runs of {workflow} in {audit}")


async def test_a_filter_error_in_the_output_fails_the_run_naming_the_output_field(
    gateway: Gateway, directory: Path
) -> None:
    ok = await call(gateway, "tags_in_output", {"tags": {"b": 1, "a": 2}})
    assert not ok.is_error and ok.structured_content == {"tags": [["a", 2], ["b", 1]]}
    result = await call(gateway, "tags_in_output", {"tags": ["a", "b"]})
    assert result.is_error
    assert text(result).startswith("workflow 'tags_in_output' failed: output.tags: AttributeError: ")
    assert "steps: who: ok" in text(result)
    assert run_ends(directory / "audit.log", "tags_in_output", 2) == ["workflow_completed", "workflow_failed"]


async def test_a_filter_error_in_a_condition_fails_its_step_and_the_abort_cancels_the_sibling(
    gateway: Gateway, directory: Path
) -> None:
    """A condition that cannot be read is its step's failure, under the step's on_error like any other: here
    `abort`, so the run ends at once (not after the sibling's 60 s) and the sibling is reported cancelled."""
    result = await call(gateway, "tags_in_condition", {"tags": ["a", "b"]})
    assert result.is_error
    assert text(result).startswith("workflow 'tags_in_condition' failed: step 'who' failed: condition: AttributeError")
    assert "steps: who: failed, sibling: cancelled" in text(result)
    assert run_ends(directory / "audit.log", "tags_in_condition", 1) == ["workflow_failed"]


async def test_under_on_error_continue_a_condition_error_leaves_the_sibling_running(gateway: Gateway) -> None:
    result = await call(gateway, "tags_in_condition_continue", {"tags": ["a", "b"]})
    assert not result.is_error, text(result)
    assert result.structured_content == {"result": "sibling"}


@pytest.mark.parametrize(
    ("workflow", "failure"),
    [
        ("tags_in_arguments", "step 'echo' failed: arguments.message: AttributeError: "),
        ("tags_in_over", "step 'each' failed: over: AttributeError: "),
    ],
)
async def test_a_filter_error_in_arguments_or_over_names_the_step_and_field(
    gateway: Gateway, workflow: str, failure: str
) -> None:
    result = await call(gateway, workflow, {"tags": ["a", "b"]})
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: {failure}")


async def test_non_finite_float_constants_evaluate_as_their_values(gateway: Gateway) -> None:
    result = await call(gateway, "infinite_constants")
    assert not result.is_error, text(result)
    assert result.structured_content == {"inf": True, "nan": True}


async def test_a_non_finite_float_is_no_output_value(gateway: Gateway) -> None:
    """The text would say `Infinity` (not JSON) and the structured content `null`: refused, by field."""
    result = await call(gateway, "infinite_output")
    assert result.is_error
    assert text(result).startswith(
        "workflow 'infinite_output' failed: output.big: ValueError: the expression gives inf"
    )


@pytest.mark.parametrize(
    ("workflow", "place", "operator"),
    [
        ("huge_division", "step 'divide' failed: arguments.message", "//"),
        ("huge_remainder", "output.rest", "%"),
        ("huge_round", "output.rounded", "round"),
        ("huge_true_division", "step 'divide' failed: arguments.message", "/"),
    ],
)
async def test_dividing_an_integer_past_the_bound_is_refused_naming_the_bound(
    gateway: Gateway, workflow: str, place: str, operator: str
) -> None:
    result = await call(gateway, workflow)
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: {place}: SecurityError: ")
    assert f"`{operator}` on an integer of {HUGE_BITS:,} bits" in text(result)
    assert f"at most {MAX_DIVISION_BITS:,} bits" in text(result)


def test_vmcp_workflow_run_reports_an_output_error_as_the_runs_failure(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"backends": [demo_backend("d")], "workflows": WORKFLOWS[:1]}
    settings["aggregation"] = {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"}
    config = write_config(tmp_path, settings)
    run = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "workflow", "run", "-c", str(config), "tags_in_output", "-a", 'tags=["a"]'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    assert "output.tags: AttributeError" in run.stderr + run.stdout


def test_every_arithmetic_operator_looks_at_the_run_deadline() -> None:
    """One binary operation and no loop (no line of template code past the first): the deadline, passed
    already, is seen at the operation. The operation itself would take no time: the look is at every one."""
    with pytest.raises(TemplateError, match="ran past its deadline"):
        render_value("{{ params.a - params.b }}", {"params": {"a": 2, "b": 1}}, "arguments", deadline=0.0)
