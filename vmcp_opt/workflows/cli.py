"""`vmcp workflow`: list the configured workflows, or run one against the configured backends and print
each step's status, duration and output as it finishes: the author's way to try a workflow before an
agent does. The run takes the gateway's own path (router, policy, health guard), without a transport."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import typer
from rich.markup import escape

from vmcp_opt.console import OutputConsole
from vmcp_opt.display import printable, shorten

workflow_app = typer.Typer(no_args_is_help=True)
out = OutputConsole()
err = OutputConsole(stderr=True)
_STATUS = {"ok": "green", "failed": "red", "skipped": "yellow"}
CLI_CALLER = "local:vmcp-workflow-run"


# The first catalogue waits for every backend's first attempt, each bounded by its `timeouts.connect`, as
# `vmcp backends` does (`BackendManager.start`): after `server.startup_wait` (5 s) a backend still starting
# was missing from the run, its tools "unknown".
_EVERY_BACKEND = {"server": {"startup_wait": math.inf}}


def _load(config: Path | None) -> Any:
    """The config, its optimizer off (no embedding model for one run) unless a workflow's step calls one of its
    meta-tools: `call_tool` steps then route as in the gateway, where they were "unknown tool" here."""
    from vmcp_opt.cli_config import load_or_exit  # the CLI's loader: problems printed by path, exit 2
    from vmcp_opt.optimizer.meta_tool_forms import META_TOOL_NAMES

    loaded = load_or_exit(config, _EVERY_BACKEND)
    if any(step.tool in META_TOOL_NAMES for workflow in loaded.workflows for step in workflow.steps):
        return loaded
    return load_or_exit(config, {**_EVERY_BACKEND, "optimizer": {"enabled": False}})


@workflow_app.command("list")
def list_workflows(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config file (YAML or JSON).")] = None,
) -> None:
    """The configured workflows: name, steps and description."""
    cfg = _load(config)
    if not cfg.workflows:
        out.print("no workflows in this config (`workflows:`)")
    for workflow in cfg.workflows:
        steps = ", ".join(f"{s.id}→{s.tool}" for s in workflow.steps)
        out.print(f"[bold]{shown(workflow.name)}[/]: {shown(workflow.description)}", highlight=False)
        out.print(f"  steps: {printable(steps)}", markup=False, highlight=False)


@workflow_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The workflow's name.")],
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            "-a",
            metavar="<key=value>",
            help="An argument as key=value; the value is read as JSON when it parses, unless the parameter is a string.",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config file (YAML or JSON).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole run report as JSON.")] = False,
) -> None:
    """Run one workflow against the configured backends; exit 1 when it fails."""
    from vmcp_opt.cli import setup_logging

    cfg = _load(config)
    setup_logging("warning")
    names = [w.name for w in cfg.workflows]
    if name not in names:
        there = ", ".join(names) or "none"
        err.print(f"no workflow '{printable(name)}' in this config (there are: {there})", markup=False)
        raise typer.Exit(2)
    workflow = next(w for w in cfg.workflows if w.name == name)
    arguments = parse_arguments(arg or [], workflow.parameters)
    check_arguments(cfg, name, arguments)
    report = anyio.run(_run, cfg, name, arguments, not as_json)
    if as_json:
        out.print_json(data=report)
    if report["error"] is not None:
        if not as_json:
            because = _not_connected(report.get("not_connected", {}))
            err.print(f"[bold red]failed[/]: {shown(report['error'])}{because}", highlight=False)
        raise typer.Exit(1)


def _not_connected(down: dict[str, str]) -> str:
    """Why a step's tool may be unknown: the backends that never connected, each with its reason."""
    said = "; ".join(f"backend '{name}' is not connected: {reason}" for name, reason in down.items())
    return shown(f" ({said})") if said else ""


def shown(text: str) -> str:
    """Config, client or backend text inside a line with markup: its brackets taken as text (`[/var/log]` in an
    error ended the command with a MarkupError), its control characters escaped."""
    return escape(printable(text))


def parse_arguments(pairs: list[str], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it parses, except for a parameter `parameters` types as
    a string only: `--arg zip=02134` is the text, not the number 2134."""
    properties = (parameters or {}).get("properties")
    texts = {key for key, spec in (properties or {}).items() if isinstance(spec, dict) and spec.get("type") == "string"}
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err.print(f"--arg {printable(pair)}: expected key=value", markup=False)
            raise typer.Exit(2)
        if key in texts:
            arguments[key] = value
            continue
        try:
            arguments[key] = json.loads(value)
        except ValueError:
            arguments[key] = value
    return arguments


def check_arguments(cfg: Any, name: str, arguments: dict[str, Any]) -> None:
    """The arguments against the workflow's parameters, as the gateway checks them, but before any backend
    starts (seconds for the demo's seven): every problem listed, exit 2, as for a malformed --arg."""
    from vmcp_opt.arguments import ArgumentError, ArgumentValidator

    workflow = next(w for w in cfg.workflows if w.name == name)
    validator = ArgumentValidator(cfg.limits.argument_check_timeout, cfg.limits.schema_cache_size)
    try:
        validator.check(name, workflow.parameters, arguments)
    except ArgumentError as exc:
        err.print(f"[bold red]invalid arguments[/] for workflow '{shown(name)}':", highlight=False)
        for problem in exc.problems:
            err.print(f"  {printable(problem)}", markup=False, highlight=False)
        raise typer.Exit(2) from None


# What a terminal must not get raw inside JSON text (json.dumps escapes C0 controls itself): DEL, C1
# controls, line separators and bidirectional overrides.
_UNSAFE_IN_JSON = re.compile(r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def readable_json(value: Any, indent: int | None = None) -> str:
    """JSON with other scripts as written (`日本語`, not `\\u65e5…`), and what could upset a terminal escaped."""
    text = json.dumps(value, indent=indent, default=str, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _prompt(field: str) -> str:
    return str(typer.prompt(f"  {field}", default="", show_default=False))


async def terminal_ask(message: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An elicitation step's question, asked on the terminal: one prompt per form field; an empty answer to
    a required field declines, an answer that is not of the field's type is asked again, and the end of
    the terminal's input cancels (as a user dismissing the question)."""
    out.print(f"[bold]?[/] {shown(message)}", highlight=False)
    content: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for field, spec in schema.get("properties", {}).items():
        while True:
            try:
                answer = await anyio.to_thread.run_sync(_prompt, field)
            except (typer.Abort, EOFError):
                err.print("no terminal input to answer with: the question is cancelled")
                return {"action": "cancel"}
            if answer == "":
                break
            value = _typed(answer, spec.get("type"))
            if value is not None:
                content[field] = value
                break
            kind = printable(str(spec.get("type")))
            err.print(f"  '{printable(answer)}' is not of type {kind}; try again (empty to skip)", markup=False)
        if answer == "" and field in required:
            return {"action": "decline"}
    return {"action": "accept", "content": content}


def _typed(answer: str, kind: Any) -> Any:
    """The answer as the form field's type, or None when it does not parse as one."""
    if kind == "boolean":
        return answer.strip().lower() in ("y", "yes", "true", "1")
    try:
        return {"integer": int, "number": float}.get(kind, str)(answer)
    except ValueError:
        return None


async def _run(cfg: Any, name: str, arguments: dict[str, Any], live: bool) -> dict[str, Any]:
    from vmcp_opt.arguments import ArgumentError
    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.gateway import Gateway
    from vmcp_opt.routing import Exchange
    from vmcp_opt.workflows.executor import StepReport

    gateway = Gateway(cfg)
    caller = Caller(id=CLI_CALLER, identified_by=Identification.SESSION, protocol_version="2025-11-25")

    async def step_done(step: StepReport) -> None:
        if live:
            colour = _STATUS.get(step.status, "white")
            line = f"[{colour}]{step.status:>7}[/] [bold]{step.id}[/]  {step.duration * 1000:.0f} ms"
            line += f"  ({step.attempts} calls)" if step.attempts > 1 else ""
            out.print(line, highlight=False)
            said = step.error if step.error is not None else readable_json(step.output)
            out.print(f"          {shorten(said, 400)}", markup=False, highlight=False)

    async with anyio.create_task_group() as group:
        await gateway.start(group)
        await gateway.first_catalogue()  # under best_effort, start returns before the backends have connected
        down = {c.name: c.last_error or c.state.value for c in gateway.backends.not_ready()}
        try:
            report = await gateway.workflows.run(
                name, arguments, caller, Exchange.internal(), gateway.router, step_done, ask=terminal_ask
            )
        except ArgumentError as exc:
            return {
                "workflow": name,
                "ok": False,
                "error": f"arguments: {exc}",
                "steps": [],
                "output": None,
                "not_connected": down,
            }
        finally:
            gateway.stop()
            group.cancel_scope.cancel()
    if live and report.ok:
        calls = f"{report.calls} call{'s' if report.calls != 1 else ''}"  # nested workflows' included
        out.print(f"[bold green]ok[/] in {report.duration * 1000:.0f} ms, {calls}; output:", highlight=False)
        out.print(readable_json(report.output, indent=2), markup=False, highlight=False)
    return {
        "workflow": report.workflow,
        "ok": report.ok,
        "error": report.error,
        "failed_step": report.failed_step,
        "duration_ms": round(report.duration * 1000, 1),
        "calls": report.calls,
        "steps": [
            {**s.view(), "id": s.id, "attempts": s.attempts, "duration_ms": round(s.duration * 1000, 1)}
            for s in report.steps.values()
        ],
        "output": report.output,
        "not_connected": down,  # backend name: why (redacted), as `vmcp backends` says it
    }
