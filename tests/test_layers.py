"""The rules of docs/architecture.md, "Which way dependencies point", checked on the source: every import of
ours, at the top of a module or inside a function, from each package to the packages it must not reach, and
for `shared/` and `telemetry/` to anything but the modules they may import. An exception the docs explain is
listed with the module that may make it; a new reach fails here until the docs and these lists say why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vmcp_opt"

# package -> the packages of ours it must not import.
FORBIDDEN = {
    "config": {"*"},  # a leaf: imports nothing of the package outside itself
    "backends": {"aggregation", "auth", "gateway", "health", "optimizer", "routing", "server", "shared", "workflows"},
    "aggregation": {"optimizer", "routing", "server", "workflows", "gateway"},
    "routing": {"optimizer", "server", "shared", "workflows", "gateway", "telemetry"},
    "optimizer": {"server", "shared", "workflows", "gateway", "telemetry"},
    "server": {"backends", "aggregation", "health"},
    "health": {"routing", "server", "optimizer", "workflows", "gateway"},
    "code_mode": {"server", "optimizer", "workflows", "gateway", "shared", "backends", "aggregation", "health"},
}
# (importing module, imported package): the exceptions docs/architecture.md gives.
ALLOWED = {
    # `vmcp index` imports from above it, lazily, inside the command (its usage history lives in shared/).
    ("optimizer/index_cli.py", "shared"),
    # Resource subscriptions are handed to backends/resource_updates.py; the secret filter for logs.
    ("server/listen.py", "backends"),
    ("server/handlers.py", "backends"),
    ("server/runner.py", "backends"),
    ("server/bad_input.py", "backends"),  # `value_count`: a client body's values, counted before it is parsed
    ("server/held_answers.py", "backends"),  # `json_size`: a result held for a stdio client not reading
    ("server/reserved_answers.py", "backends"),  # `json_size`: an answer's size charged when it is ready
    ("server/lazy_stream.py", "backends"),  # `json_size`: a large JSON answer encoded off the event loop
}


# package -> the modules of ours outside it that it may import (an entry admits its submodules too); anything
# else fails. Stricter than FORBIDDEN: these two packages serve the request path from beside it, and each reach
# is one the docs name.
MAY_IMPORT = {
    # shared/ implements, for several replicas, interfaces the packages below it define; it never reaches the
    # transports or the composition root (server/ and gateway.py use it).
    "shared": {
        "config",
        "display",
        "logs",
        "auth.caller",  # rate_limits.py: buckets per caller
        "routing.budget",  # rate_limits.py: `LimitReached`, the refusal the router raises
        "routing.round_trips",  # round_relay.py: the rounds it carries to the replica that owns them
        "optimizer.usage",  # usage_history.py: the co-usage graph it keeps in Redis
        "backends.connection",  # freshness.py, factories.py: the connections a change broadcast re-lists
    },
    # telemetry/ watches what the router and the workflow executor report, and calls neither.
    "telemetry": {
        "config",
        "display",
        "file_writes",  # audit_sink.py: lines appended whole or not at all
        "logs",
        "auth",  # the caller and identity an operation is for
        "routing.operations",  # the watcher interface
        "routing.exchange",  # what audit reads of a request
        "routing.providers",  # GATEWAY_SOURCE
        "workflows.provider",  # WORKFLOW_SOURCE
        "workflows.step_events",  # the step watch a workflow's steps report to
        "workflows.executor",  # the run and step reports (types only)
    },
}


def modules_of_ours(path: Path) -> set[str]:
    """The modules of ours (dotted, after `vmcp_opt.`) that `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from vmcp_opt import server` reaches `server` as surely as `from vmcp_opt.server import x`.
            names = [f"vmcp_opt.{alias.name}" for alias in node.names] if node.module == "vmcp_opt" else [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.removeprefix("vmcp_opt.") for name in names if name.startswith("vmcp_opt.")}
    return found


def imports_of_ours(path: Path) -> set[str]:
    """The packages (first part after `vmcp_opt.`) that `path` imports."""
    return {module.split(".")[0] for module in modules_of_ours(path)}


def admitted(module: str, entries: set[str]) -> set[str]:
    """The entries that admit importing `module`: itself, or a package it is part of."""
    return {entry for entry in entries if module == entry or module.startswith(entry + ".")}


def reaches(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for imported in imports_of_ours(path) - {package}:
            if ("*" in forbidden or imported in forbidden) and (module, imported) not in ALLOWED:
                found.append(f"{module} imports vmcp_opt.{imported}")
    return found


def outside_reaches(package: str) -> dict[str, set[str]]:
    """Module of `package` -> the modules of ours outside `package` it imports."""
    found = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        modules = {module for module in modules_of_ours(path) if module.split(".")[0] != package}
        found[path.relative_to(PACKAGE).as_posix()] = modules
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_the_architecture_keeps_it_from(package: str) -> None:
    assert reaches(package) == []


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_beside_the_path_imports_only_what_it_may(package: str) -> None:
    wrong = [
        f"{module} imports vmcp_opt.{imported}"
        for module, imports in outside_reaches(package).items()
        for imported in sorted(imports)
        if not admitted(imported, MAY_IMPORT[package])
    ]
    assert wrong == []


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_every_reach_a_package_may_make_is_still_made(package: str) -> None:
    # A reach no module makes any more comes off the list (and the docs), so the list stays the real one.
    made = set().union(*outside_reaches(package).values())
    unused = sorted(entry for entry in MAY_IMPORT[package] if not any(admitted(module, {entry}) for module in made))
    assert unused == []


def test_every_allowed_exception_is_still_made() -> None:
    # An exception no module makes any more is a rule the docs can state without it.
    unused = [
        f"{module} -> {imported}"
        for module, imported in sorted(ALLOWED)
        if imported not in imports_of_ours(PACKAGE / module)
    ]
    assert unused == []


def test_the_script_runner_is_a_program_of_its_own() -> None:
    """code_mode/runner.py is the child process's whole program: importing the package would start the gateway's
    imports in every script's process (and give a script's interpreter more to reach)."""
    assert imports_of_ours(PACKAGE / "code_mode" / "runner.py") == set()
