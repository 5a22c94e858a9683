"""The rules of docs/architecture.md, "Which way dependencies point", checked on the source: every import of
ours, at the top of a module or inside a function, from each package to the packages it must not reach.
An exception the docs explain is listed with the module that may make it; a new reach fails here until the
docs and this list say why."""

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
    "telemetry": {"server", "gateway", "backends", "optimizer"},
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
}


def imports_of_ours(path: Path) -> set[str]:
    """The packages (first part after `vmcp_opt.`) that `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from vmcp_opt import server` reaches `server` as surely as `from vmcp_opt.server import x`.
            names = [f"vmcp_opt.{alias.name}" for alias in node.names] if node.module == "vmcp_opt" else [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("vmcp_opt.")}
    return found


def reaches(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for imported in imports_of_ours(path) - {package}:
            if ("*" in forbidden or imported in forbidden) and (module, imported) not in ALLOWED:
                found.append(f"{module} imports vmcp_opt.{imported}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_the_architecture_keeps_it_from(package: str) -> None:
    assert reaches(package) == []


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
