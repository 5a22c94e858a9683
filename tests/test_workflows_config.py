"""Workflow definitions refused at load, each by its path, all in one pass; and `vmcp workflow run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import EXAMPLES, ROOT
from vmcp_opt.config import ConfigError, load_config


def problems(tmp_path: Path, workflows: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"workflows": workflows}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def wf(steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "description": "d", "steps": steps, **fields}


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (
            wf([{"id": "a", "tool": "t", "depends_on": ["fetch"]}]),
            "workflows[0].steps[0].depends_on: unknown step 'fetch'",
        ),
        (
            wf([{"id": "a", "tool": "t", "depends_on": ["b"]}, {"id": "b", "tool": "t", "depends_on": ["a"]}]),
            "workflows[0].steps: depends_on forms a cycle: a -> b -> a",
        ),
        (
            wf([{"id": "a", "tool": "t"}, {"id": "a", "tool": "u"}]),
            "workflows[0].steps: step ids must be unique, repeated: a",
        ),
        (
            wf([{"id": "a", "tool": "t", "arguments": {"x": {"y": ["{{ params.q "]}}}]),
            "workflows[0].steps[0].arguments.x.y[0]: template syntax error: unexpected end of template, expected 'end of print statement'.",
        ),
        (
            wf([{"id": "a", "tool": "t"}, {"id": "b", "tool": "t", "condition": "{{ steps.a.status == 'ok' }}"}]),
            "workflows[0].steps[1].condition: reads step 'a', which is not in depends_on (directly or through another step)",
        ),
        (
            wf([{"id": "a", "tool": "t"}], output={"x": "{{ steps.zz.output }}"}),
            "workflows[0].output.x: unknown step 'zz'",
        ),
        (
            wf([{"id": "a", "tool": "t"}], parameters={"type": "object", "properties": {"n": {"type": "integr"}}}),
            "workflows[0].parameters.properties.n.type: not a valid JSON Schema: 'integr' is not valid under any of the given schemas",
        ),
        (
            wf([{"id": "a", "tool": "t"}], parameters={"type": "array"}),
            "workflows[0].parameters.type: a tool's input schema must be of type 'object'",
        ),
        (
            wf([{"id": "a", "type": "for_each", "tool": "t"}]),
            "workflows[0].steps[0].over: a for_each step needs `over` (a template giving the list to go over)",
        ),
        (wf([{"id": "a"}]), "workflows[0].steps[0].tool: a tool step needs `tool`"),
        (
            wf([{"id": "a", "tool": "t", "on_error": "ignore"}]),
            "workflows[0].steps[0].on_error.action: Input should be 'abort', 'continue' or 'retry'",
        ),
        (
            wf([{"id": "a", "tool": "t", "retry": 3}]),
            "workflows[0].steps[0].retry: unknown key (check the spelling; unknown keys are not allowed)",
        ),
        (
            wf([{"id": "a", "tool": "t"}], name="call_tool"),
            "workflows[0].name: 'call_tool' is a meta-tool's name",
        ),
    ],
)
def test_each_kind_of_bad_definition_is_refused_with_its_path(
    tmp_path: Path, definition: dict[str, Any], expected: str
) -> None:
    assert expected in problems(tmp_path, [definition])


def test_elicitation_steps_need_a_message_and_a_flat_form(tmp_path: Path) -> None:
    nested = {"type": "object", "properties": {"who": {"type": "object"}}}
    found = problems(tmp_path, [wf([{"id": "ask", "type": "elicitation", "tool": "t", "requested_schema": nested}])])
    assert found == [
        "workflows[0].steps[0].tool: an elicitation step takes no `tool`",
        "workflows[0].steps[0].message: an elicitation step needs `message` (what the user is asked)",
        "workflows[0].steps[0].requested_schema.properties.who: a form field must be a string, number, integer or boolean",
    ]


def test_workflows_calling_each_other_in_a_cycle_and_repeated_names(tmp_path: Path) -> None:
    cycle = [
        {"name": "a", "description": "d", "steps": [{"id": "s", "tool": "b"}]},
        {"name": "b", "description": "d", "steps": [{"id": "s", "tool": "a"}]},
    ]
    assert problems(tmp_path, cycle) == ["workflows[0]: workflows call each other in a cycle: a -> b -> a"]
    twice = [wf([{"id": "s", "tool": "t"}]), wf([{"id": "s", "tool": "t"}])]
    assert problems(tmp_path, twice) == ["workflows: names must be unique, repeated: wf"]


def test_validate_reports_every_problem_of_every_workflow_at_once(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    bad = [
        wf([{"id": "a", "tool": "t", "depends_on": ["nope"]}, {"id": "b", "type": "for_each", "tool": "t"}]),
        {"name": "w2", "description": "d", "steps": [{"id": "x", "tool": "t", "arguments": {"v": "{% if %}"}}]},
    ]
    path.write_text(yaml.safe_dump({"workflows": bad}), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert "  workflows[0].steps[0].depends_on: unknown step 'nope'" in lines
    assert any(line.startswith("  workflows[0].steps[1].over:") for line in lines)
    assert any(line.startswith("  workflows[1].steps[0].arguments.v: template syntax error") for line in lines)


def test_a_bad_field_hides_none_of_the_workflow_s_other_problems(tmp_path: Path) -> None:
    steps = [
        {"id": "a", "tool": "t", "on_error": "retyr"},
        {"id": "a", "tool": "t"},
        {"id": "b", "tool": "t", "depends_on": ["nope", "c"]},
        {"id": "c", "tool": "t", "depends_on": ["b"], "arguments": {"v": "{{ oops"}},
        "not a step",
    ]
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"workflows": [wf(steps), wf([{"id": "x", "tool": "t"}])]}), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[1:] == [
        "  workflows[0].steps[0].on_error.action: Input should be 'abort', 'continue' or 'retry' (did you mean 'retry'?)",
        "  workflows[0].steps[4]: Input should be a valid dictionary or instance of StepConfig",
        "  workflows[0].steps: step ids must be unique, repeated: a",
        "  workflows[0].steps[2].depends_on: unknown step 'nope'",
        "  workflows[0].steps: depends_on forms a cycle: b -> c -> b",
        "  workflows[0].steps[3].arguments.v: template syntax error: unexpected end of template, expected 'end of "
        "print statement'.",
        "  workflows: names must be unique, repeated: wf",
    ]


@pytest.mark.slow
def test_workflow_run_prints_each_step_and_the_output(tmp_path: Path) -> None:
    config = {
        "backends": [
            {"name": "flaky", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "flaky_server.py")]}
        ],
        "workflows": [
            wf(
                [
                    {
                        "id": "fetch",
                        "tool": "flaky_unreliable_fetch",
                        "arguments": {"key": "{{ params.key }}"},
                        "on_error": {"action": "retry", "delay": 0},
                    },
                    {
                        "id": "count",
                        "tool": "flaky_call_count",
                        "depends_on": ["fetch"],
                        "arguments": {"key": "{{ params.key }}"},
                    },
                ],
                output={"value": "{{ steps.fetch.output.value }}", "calls": "{{ steps.count.output.result }}"},
                parameters={"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
            )
        ],
    }
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "wf", "-c", str(path), "--arg", "key=k"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["ok", "fetch"] and "(3 calls)" in lines[0]
    assert lines[2].split()[:2] == ["ok", "count"]
    assert '"value": "value of k"' in done.stdout and '"calls": 3' in done.stdout
    missing = subprocess.run([*command[:-2]], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 2 and "  field 'key': required but missing" in missing.stderr


@pytest.mark.slow
def test_validate_connect_names_steps_whose_tools_no_backend_serves(tmp_path: Path) -> None:
    config = {
        "backends": [{"name": "time", "command": sys.executable, "args": ["-m", "mcp_server_time"]}],
        "workflows": [wf([{"id": "a", "tool": "time_get_current_time"}, {"id": "b", "tool": "time_nope"}])],
    }
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)]
    offline = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0 and "1 workflow (wf)" in offline.stdout
    connected = subprocess.run([*command, "--connect"], capture_output=True, text=True, timeout=120)
    assert connected.returncode == 2
    assert (
        "  workflows[0].steps[1].tool: unknown tool 'time_nope' (no backend or workflow serves it now)"
        in connected.stderr
    )


@pytest.mark.slow
def test_workflow_run_asks_an_elicitation_step_on_the_terminal(tmp_path: Path) -> None:
    form = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    config = {
        "backends": [
            {"name": "notes", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "demo_server.py")]}
        ],
        "workflows": [
            wf(
                [
                    {"id": "ask", "type": "elicitation", "message": "Title?", "requested_schema": form},
                    {
                        "id": "save",
                        "tool": "notes_save_note",
                        "depends_on": ["ask"],
                        "arguments": {"title": "{{ steps.ask.output.content.title }}", "text": "x"},
                    },
                ]
            )
        ],
    }
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "wf", "-c", str(path)]
    answered = subprocess.run(command, input="Dr\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert answered.returncode == 0, answered.stderr
    assert "? Title?" in answered.stdout and "saved note 'Dr'" in answered.stdout
    declined = subprocess.run(command, input="\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert declined.returncode == 1 and "step 'ask' failed: the user chose 'decline'" in declined.stderr


def test_a_call_tool_step_with_a_literal_tool_name_counts_in_the_cycle_check(tmp_path: Path) -> None:
    through = [
        {
            "name": "rec",
            "description": "d",
            "steps": [{"id": "a", "tool": "call_tool", "arguments": {"tool_name": "rec"}}],
        },
        {
            "name": "dispatch",  # a template: known only at run time, where nesting is bounded
            "description": "d",
            "steps": [{"id": "a", "tool": "call_tool", "arguments": {"tool_name": "{{ params.t }}"}}],
        },
    ]
    assert problems(tmp_path, through) == ["workflows[0]: workflows call each other in a cycle: rec -> rec"]


def test_a_cycle_is_reported_beside_a_field_problem_and_every_cycle_is(tmp_path: Path) -> None:
    definitions = [
        {"name": "a", "description": "d", "steps": [{"id": "s", "tool": "b"}]},
        {"name": "b", "description": "d", "steps": [{"id": "s", "tool": "a"}]},
        {"name": "c", "description": "", "steps": [{"id": "s", "tool": "c"}]},
    ]
    found = problems(tmp_path, definitions)
    assert "workflows[2].description: String should have at least 1 character" in found
    assert "workflows[0]: workflows call each other in a cycle: a -> b -> a" in found
    assert "workflows[2]: workflows call each other in a cycle: c -> c" in found


def test_plain_text_is_no_step_reference_and_a_computed_one_is_refused(tmp_path: Path) -> None:
    prose = wf([{"id": "a", "tool": "t", "arguments": {"v": "Write down the next steps. Then stop."}}])
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"workflows": [prose]}), encoding="utf-8")
    assert load_config(path).workflows[0].name == "wf"
    computed = wf(
        [
            {"id": "a", "tool": "t"},
            {"id": "b", "tool": "t", "arguments": {"v": "{{ steps['a' ~ ''] }}", "w": "{{ steps.get('a') }}"}},
        ]
    )
    assert problems(tmp_path, [computed]) == [
        "workflows[0].steps[1].arguments.v: reads `steps[...]`, which does not name a step; write steps.<id> "
        "or steps['<id>'] so that the step can be checked against depends_on",
        "workflows[0].steps[1].arguments.w: reads `steps.get`, which does not name a step; write steps.<id> "
        "or steps['<id>'] so that the step can be checked against depends_on",
    ]
    named = wf([{"id": "a", "tool": "t"}, {"id": "b", "tool": "t", "arguments": {"v": "{{ steps['a'].output }}"}}])
    assert problems(tmp_path, [named]) == [
        "workflows[0].steps[1].arguments.v: reads step 'a', which is not in depends_on (directly or through another step)"
    ]


@pytest.mark.slow
def test_workflow_run_re_asks_a_bad_number_and_cancels_at_the_end_of_input(tmp_path: Path) -> None:
    form = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    config = {
        "backends": [
            {"name": "notes", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "demo_server.py")]}
        ],
        "workflows": [wf([{"id": "ask", "type": "elicitation", "message": "How many?", "requested_schema": form}])],
    }
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "wf", "-c", str(path), "--json"]
    answered = subprocess.run(command, input="many\n3\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert answered.returncode == 0, answered.stderr
    assert "'many' is not of type integer" in answered.stderr and '"n": 3' in answered.stdout
    ended = subprocess.run(command, input="", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ended.returncode == 1
    assert "no terminal input" in ended.stderr and "the user chose 'cancel'" in ended.stdout
