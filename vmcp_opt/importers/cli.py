"""`vmcp import toolhive FILE`: a ToolHive vMCP config as ours, checked by our own loader, with every item that did
not carry over listed on stderr by its ToolHive path. Exit codes: 0 all converted, 1 converted with items left out
(or an output our loader refuses), 2 input unreadable or output refused."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml

from vmcp_opt.importers.findings import Findings

import_app = typer.Typer(no_args_is_help=True)
# A ToolHive config is a few kilobytes; a file this large is not one, and would only cost memory to parse.
MAX_INPUT_BYTES = 4 * 1024 * 1024
DEFAULT_POLICY_FILE = "toolhive-policies.cedar"
# Values the conversion may walk: YAML aliases can make a small file expand past any memory (a "billion laughs").
MAX_VALUES = 1_000_000
# Nesting a conversion may meet: ToolHive's deepest is about 10, and yaml.safe_dump recurses (a few frames a level)
# past Python's limit at a few hundred, which would end in a traceback after the conversion.
MAX_DEPTH = 64


def _excess(document: Any) -> str | None:
    """What makes `document` too large to convert, walked as the conversion walks it (an alias once per use)."""
    budget = MAX_VALUES
    pending = [(document, 1)]
    while pending:
        budget -= 1
        if budget < 0:
            return f"holds more than {MAX_VALUES} values once its YAML aliases are expanded"
        value, depth = pending.pop()
        if depth > MAX_DEPTH and isinstance(value, dict | list):
            return f"nests deeper than {MAX_DEPTH} levels; not a ToolHive vMCP config"
        if isinstance(value, dict):
            pending.extend((inner, depth + 1) for inner in value.values())
        elif isinstance(value, list):
            pending.extend((inner, depth + 1) for inner in value)
    return None


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"vmcp import toolhive: {message}\n")
    raise typer.Exit(2)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}")
    if len(raw) > MAX_INPUT_BYTES:
        _fail(f"{path} is larger than {MAX_INPUT_BYTES} bytes; not a ToolHive vMCP config")
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except RecursionError:
        _fail(f"{path} nests too deep to be a ToolHive vMCP config")
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        _fail(f"{path} is not YAML or JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if not isinstance(document, dict):
        _fail(f"{path} holds no mapping (a ToolHive vMCP config has keys such as backends, aggregation)")
    if excess := _excess(document):
        _fail(f"{path} {excess}")
    if document.get("kind") and document.get("apiVersion"):
        _fail(f"{path} is a Kubernetes {document['kind']} resource; give the vMCP config itself (its spec.config)")
    return document


@import_app.command("toolhive")
def toolhive(
    file: Annotated[Path, typer.Argument(help="A ToolHive vMCP config (YAML or JSON).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the config here (and its Cedar policies beside it).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output files if they exist.")] = False,
) -> None:
    """Convert a ToolHive vMCP config; list what did not convert on stderr."""
    from vmcp_opt.importers.toolhive import convert

    document = _read(file)
    findings = Findings()
    try:
        imported = convert(document, findings)
    except (AttributeError, TypeError, ValueError, RecursionError) as exc:  # a value of another shape than ToolHive's
        _fail(f"{file} is not a ToolHive vMCP config this importer can read ({type(exc).__name__}: {exc})")
    policy_name = output.with_suffix(".cedar").name if output else DEFAULT_POLICY_FILE
    if imported.policies is not None:
        imported.config.setdefault("auth", {})["authorization"] = {"policies": policy_name}
    text = _render(file, imported.config, imported.left_workflows)
    problems = _validate(text, policy_name, imported.policies, findings.variables)
    if output is None:
        sys.stdout.write(text)
        if imported.policies is not None:
            findings.note(
                "incomingAuth.authz.policies", f"save these as {policy_name} beside the config:\n" + imported.policies
            )
    else:
        files = {output: text} | ({output.with_name(policy_name): imported.policies} if imported.policies else {})
        _write_all(files, force)
    _report(findings, problems)
    raise typer.Exit(1 if findings.left_out or problems else 0)


def _render(source: Path, config: dict[str, Any], left: list[dict[str, Any]]) -> str:
    head = f"# vmcp-opt config imported from the ToolHive vMCP config {source.name} (vmcp import toolhive).\n"
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True) if config else "{}\n"
    if not left:
        return head + body
    tail = "\n# TODO(import): workflows left out, their Go templates not translated; fix them and move them up.\n"
    block = yaml.safe_dump({"workflows": left}, sort_keys=False, allow_unicode=True)
    return head + body + tail + "".join(f"# {line}\n" for line in block.splitlines())


def _write_all(files: dict[Path, str], force: bool) -> None:
    """Every file or none: one that exists refuses the lot before anything is written."""
    for path in files if not force else ():
        if path.exists():
            _fail(f"{path} exists; give --force to overwrite it")
    for path, text in files.items():
        _write(path, text, force)


def _write(path: Path, text: str, force: bool) -> None:
    try:
        with path.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        _fail(f"{path} exists; give --force to overwrite it")
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


def _validate(text: str, policy_name: str, policies: str | None, variables: Iterable[str]) -> list[str]:
    """What our loader (and the start's policy check) says of the output, from a copy in a scratch directory.
    The variables the output reads are listed to the user rather than required here: a placeholder stands in
    for each one this process lacks (the user sets them where the gateway runs, not where it is imported)."""
    missing = [name for name in variables if name not in os.environ]
    os.environ.update(dict.fromkeys(missing, "placeholder-set-at-import"))
    try:
        return _validate_copy(text, policy_name, policies)
    finally:
        for name in missing:
            os.environ.pop(name, None)


def _validate_copy(text: str, policy_name: str, policies: str | None) -> list[str]:
    from vmcp_opt.auth_cli import auth_problems
    from vmcp_opt.config import ConfigError, load_config

    with tempfile.TemporaryDirectory(prefix="vmcp-import-") as scratch:
        config_path = Path(scratch) / "vmcp.yaml"
        config_path.write_text(text, encoding="utf-8")
        if policies is not None:
            (Path(scratch) / policy_name).write_text(policies, encoding="utf-8")
        try:
            config = load_config(config_path, warn=lambda _line: None)
        except ConfigError as exc:
            return [problem.replace(scratch + "/", "") for problem in exc.problems]
        return [problem.replace(scratch + "/", "") for problem in auth_problems(config)]


def _report(findings: Findings, problems: list[str]) -> None:
    lines: list[str] = []
    if findings.left_out:
        lines += ["not converted (by their ToolHive path):", *(f"  {item}" for item in findings.left_out)]
    if problems:
        lines += ["the converted config does not validate yet (vmcp validate):", *(f"  {p}" for p in problems)]
    if findings.variables:
        lines.append("environment variables the gateway reads (set them before `vmcp serve`):")
        lines += [f"  {name}: {holds}" for name, holds in sorted(findings.variables.items())]
    if findings.notes:
        lines += ["notes:", *(f"  {note}" for note in findings.notes)]
    if not findings.left_out and not problems:
        lines.append("converted fully")
    sys.stderr.write("\n".join(lines) + "\n")
