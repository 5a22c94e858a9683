"""`vmcp validate` refuses workflow templates and calls that fail on every run, and `vmcp workflow` prints
config, client and backend text with brackets in it: each through the real `vmcp` command.

Templates were parsed with a plain Jinja environment, so an unknown filter or test, `lipsum`, a name the run
does not give (`param.name`, `item` outside a for_each's arguments) loaded as valid; so did a step calling a
workflow without its required argument, or one that asks its user (a nested run cannot). And rich read a
description's or an error's `[/var/log]` as a closing tag: a MarkupError ended the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, demo_backend, write_config
from vmcp_opt.workflows import templates


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != "VMCP_OPTIMIZER__MODEL_CACHE"}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        env={**inherited, "COLUMNS": "400"},
    )


def echo(template: str, **step: Any) -> dict[str, Any]:
    return {"id": "a", "tool": "notes_slow_echo", "arguments": {"message": template, "seconds": 0}, **step}


def workflow(name: str, *steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "description": "d", "steps": list(steps), **fields}


NAMED = {"type": "object", "properties": {"name": {"type": "string"}}}
ASKS = {
    "id": "q",
    "type": "elicitation",
    "message": "ok?",
    "requested_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
}

# Each fails every run; the line `vmcp validate` must print for it.
FAILING: list[tuple[dict[str, Any], str]] = [
    (
        workflow("typo", echo("{{ param.name }}"), parameters=NAMED),
        "workflows[0].steps[0].arguments.message: reads `param`, which templates here do not have "
        "(they have `params`, `steps`); did you mean 'params'? (workflow 'typo', step 'a')",
    ),
    (
        workflow("filter", echo("{{ params.name | lenght }}"), parameters=NAMED),
        "workflows[1].steps[0].arguments.message: No filter named 'lenght'. (did you mean 'length'?) "
        "(workflow 'filter', step 'a')",
    ),
    (
        workflow("test", echo("{% if params.name is strng %}x{% endif %}"), parameters=NAMED),
        "workflows[2].steps[0].arguments.message: No test named 'strng'. (did you mean 'string'?) "
        "(workflow 'test', step 'a')",
    ),
    (
        workflow("outside", echo("{{ item }}")),
        "workflows[3].steps[0].arguments.message: reads `item`, which templates here do not have",
    ),
    (
        workflow("cond", echo("x", type="for_each", over="{{ [1, 2] }}", condition="{{ item > 1 }}")),
        "workflows[4].steps[0].condition: reads `item`, which templates here do not have",
    ),
    (
        workflow("lorem", echo("{{ lipsum() }}")),
        "workflows[5].steps[0].arguments.message: reads `lipsum`",
    ),
    (
        workflow("unlisted", echo("{{ params.nmae }}"), parameters=NAMED),
        "workflows[6].steps[0].arguments.message: reads params.nmae, which is not among the parameters' "
        "properties; did you mean 'name'? (workflow 'unlisted', step 'a')",
    ),
    (
        workflow("needs", echo("{{ params.name }}"), parameters={**NAMED, "required": ["name"]}),
        "",  # valid itself: the callee of the next two
    ),
    (
        workflow("missing", {"id": "a", "tool": "needs", "arguments": {}}),
        "workflows[8].steps[0].arguments: workflow 'missing' step 'a' calls workflow 'needs' without its "
        "required argument 'name'",
    ),
    (
        workflow("through", {"id": "a", "tool": "call_tool", "arguments": {"tool_name": "needs", "arguments": {}}}),
        "workflows[9].steps[0].arguments.arguments: workflow 'through' step 'a' calls workflow 'needs' "
        "without its required argument 'name'",
    ),
]

# Each renders on a run: none of it may be refused.
VALID = [
    workflow(
        "each", echo("{{ item }} {{ index }} {{ params.name }}", type="for_each", over="{{ [1] }}"), parameters=NAMED
    ),
    workflow("own_item", echo("{{ row }}", type="for_each", over="{{ [1] }}", item="row")),
    workflow(
        "guarded",
        echo("{{ params.other | default('x') }} {% if params.more is defined %}y{% endif %}"),
        parameters=NAMED,
    ),
    workflow("open", echo("{{ params.anything }}")),  # no properties listed: a client may pass any
    workflow("globals", echo("{% set ns = namespace(n=0) %}{{ range(2) | list }}{{ dict(a=1) }}{{ ns.n }}")),
    workflow("json", echo("{{ (params.name | fromjson).a }}"), parameters=NAMED),
    workflow("calls", {"id": "a", "tool": "needs", "arguments": {"name": "{{ params.name }}"}}, parameters=NAMED),
    workflow("needs", echo("{{ params.name }}"), parameters={**NAMED, "required": ["name"]}),
]


def test_validate_refuses_templates_and_calls_that_fail_every_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [w for w, _ in FAILING]})
    done = vmcp("validate", "-c", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    for _, expected in FAILING:
        if expected:
            assert any(expected in line for line in lines), f"{expected!r} not in:\n" + "\n".join(lines)
    assert not any("'needs'" in line and "workflows[7]" in line for line in lines)


def test_validate_warns_of_a_step_calling_a_workflow_that_asks_its_user(tmp_path: Path) -> None:
    # Warned, not refused: the calling step may go on (`on_error: continue`), the question be skipped.
    nested = [workflow("asks", ASKS), workflow("nested", {"id": "a", "tool": "asks"})]
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": nested})
    done = vmcp("validate", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "warning: workflow 'nested' step 'a' calls workflow 'asks', which asks its user (step 'q'): a workflow "
        "run by another's step cannot ask, so that question fails every run"
    ) in done.stdout + done.stderr


def test_validate_accepts_what_runs_and_the_shipped_examples(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": VALID})
    done = vmcp("validate", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    demo = vmcp("validate", "-c", str(ROOT / "examples" / "demo.yaml"))
    assert demo.returncode == 0, demo.stdout + demo.stderr


def test_validate_compiles_templates_without_computing_their_constants(tmp_path: Path) -> None:
    # Jinja folds constants as it compiles: a 100,000-bit power failed the load (its repr), `center` made a GB.
    # Refused at run time by the render's bounds; here they are only compiled.
    costly = echo("{{ 2 ** 100000 }} {{ 'x' | center(1000000000) }} {{ 'x' * 10**9 }}")
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow("costly", costly)]})
    done = vmcp("validate", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_validate_checks_templates_against_the_runtime_sandbox_names() -> None:
    from vmcp_opt.config.template_checks import checking_environment  # the module this change adds

    checking = checking_environment()
    runtime = templates._ENVIRONMENT
    assert set(checking.filters) == set(runtime.filters)
    assert set(checking.tests) == set(runtime.tests)
    assert set(checking.globals) == set(runtime.globals)


def test_workflow_list_prints_a_description_with_brackets(tmp_path: Path) -> None:
    described = [
        workflow("a1", echo("x"), description="Converts a time [HH:MM] between zones"),
        workflow("a2", echo("x"), description="Lists entries under a path like [/var/log] and [bold]returns[/]"),
    ]
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": described})
    done = vmcp("workflow", "list", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "a1: Converts a time [HH:MM] between zones" in done.stdout
    assert "a2: Lists entries under a path like [/var/log] and [bold]returns[/]" in done.stdout


@pytest.mark.slow
def test_workflow_run_prints_a_failure_quoting_a_client_value_with_brackets(tmp_path: Path) -> None:
    seconds = {"id": "a", "tool": "notes_slow_echo", "arguments": {"message": "m", "seconds": "{{ params.p }}"}}
    parameters = {"type": "object", "properties": {"p": {"type": "string"}}}
    config = write_config(
        tmp_path,
        {"backends": [demo_backend("notes")], "workflows": [workflow("badpath", seconds, parameters=parameters)]},
    )
    done = vmcp("workflow", "run", "badpath", "-c", str(config), "--arg", "p=[/var/log]")
    unknown = vmcp("workflow", "run", "[/x]", "-c", str(config))
    malformed = vmcp("workflow", "run", "badpath", "-c", str(config), "--arg", "[/x]")
    assert done.returncode == 1 and "MarkupError" not in done.stderr, done.stderr
    assert "failed: step 'a' failed: " in done.stderr and '"[/var/log]"' in done.stderr, done.stderr
    assert unknown.returncode == 2 and "no workflow '[/x]' in this config" in unknown.stderr, unknown.stderr
    assert malformed.returncode == 2 and "--arg [/x]: expected key=value" in malformed.stderr, malformed.stderr
