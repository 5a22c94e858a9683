"""First-hour review, round 27: a list setting given as a bare value in its `VMCP_` variable, the banner's
stdio snippet for a gateway started with flags, and README's recipe for a first API key, run as written.
Real `vmcp` processes throughout."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.support import POLL_SECONDS, ROOT, demo_backend, running_gateway

pytestmark = pytest.mark.anyio

VMCP_SCRIPT = Path(sys.executable).parent / "vmcp"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(directory: Path, config: dict[str, Any]) -> Path:
    """The file as written: no test defaults added (`tests.support.write_config` turns the optimizer off)."""
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _validate(config: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **variables}
    command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def _problems(run: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines under `invalid configuration (...)`."""
    assert run.returncode == 2, run.stdout + run.stderr
    return [line.strip() for line in run.stderr.splitlines()[1:]]


def _suggested(problem: str, name: str) -> str:
    """The value the problem line suggests for `name`: `NAME='<json>'`."""
    found = re.search(rf"{name}=('[^']*')", problem)
    assert found is not None, problem
    return str(shlex.split(found.group(1))[0])


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("VMCP_SERVER__ALLOWED_HOSTS", "gw.example.org", ["gw.example.org"]),
        ("VMCP_SERVER__CORS_ORIGINS", "https://app.example.com", ["https://app.example.com"]),
        ("VMCP_OPTIMIZER__PINNED", "time_a, time_b", ["time_a", "time_b"]),
        ("VMCP_SERVER__TRUSTED_PROXIES", "10.0.0.0/8", ["10.0.0.0/8"]),
    ],
)
def test_a_list_variable_given_a_bare_value_is_named_with_the_json_to_write(
    tmp_path: Path, name: str, value: str, expected: list[str]
) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")]})
    # Another variable of the same section, set correctly: the line names the one that is not JSON.
    run = _validate(config, **{name: value, "VMCP_SERVER__PORT": "9000"})
    [problem] = _problems(run)
    assert problem.startswith(f"{name}: "), problem
    assert "JSON" in problem and "__*" not in problem, problem
    suggested = _suggested(problem, name)
    assert json.loads(suggested) == expected
    fixed = _validate(config, **{name: suggested, "VMCP_SERVER__PORT": "9000"})
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_a_subsection_variable_that_is_not_json_says_a_json_object_or_one_variable_per_key(tmp_path: Path) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")]})
    [problem] = _problems(_validate(config, VMCP_AUTH__INCOMING="api_keys"))
    assert problem.startswith("VMCP_AUTH__INCOMING: not JSON"), problem
    assert """VMCP_AUTH__INCOMING='{"<key>": <value>}'""" in problem, problem
    assert "VMCP_AUTH__INCOMING__<KEY>=" in problem, problem


def test_a_backend_field_set_by_index_says_backends_are_given_whole_as_json(tmp_path: Path) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")]})
    [problem] = _problems(_validate(config, VMCP_BACKENDS__0__COMMAND="foo"))
    assert problem.startswith("VMCP_BACKENDS__0__COMMAND: "), problem
    assert "YAML" not in problem and "- name" not in problem, problem  # the file's advice, for a variable
    suggested = _suggested(problem, "VMCP_BACKENDS")
    fixed = _validate(config, VMCP_BACKENDS=suggested)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "valid: 1 backend (time)" in fixed.stdout  # the variable's list replaced the file's


def test_a_list_entry_set_by_index_names_its_variable(tmp_path: Path) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")]})
    [problem] = _problems(_validate(config, VMCP_SERVER__ALLOWED_HOSTS__0="gw.example.org"))
    assert problem.startswith("VMCP_SERVER__ALLOWED_HOSTS__0: "), problem
    assert "VMCP_SERVER__ALLOWED_HOSTS='" in problem, problem


def _banner_snippet(log: Path, timeout: float = 60.0) -> tuple[dict[str, Any], str]:
    """The Claude Desktop entry the human banner printed, and its "it reads …" line ("" when none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        if any("Ctrl-C stops" in line for line in lines):
            snippet = next(line for line in lines if '"mcpServers"' in line)
            reads = next((line for line in lines if "it reads " in line), "")
            return json.loads(snippet)["mcpServers"]["vmcp"], reads
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no banner in {log}")


def _desktop_environment(needed: list[str], ours: dict[str, str]) -> dict[str, str]:
    """What a desktop client passes: a few variables of its own, and those the banner says to add (from `ours`,
    the environment the gateway was started in)."""
    own: dict[str, str] = {name: ours[name] for name in ("PATH", "HOME") if name in ours}
    return {**own, "HF_HUB_OFFLINE": "1", **{name: ours[name] for name in needed if name in ours}}


async def test_the_banner_snippet_starts_the_gateway_as_it_was_started(tmp_path: Path) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")]})  # the optimizer on, by default
    marker = "f16-service-name-value"
    extra = {"OTEL_SERVICE_NAME": marker, "SSL_CERT_FILE": certifi.where()}
    with running_gateway(config, "--no-optimizer", env=extra) as gateway:
        entry, reads = _banner_snippet(gateway.log)
        output = gateway.output()
    assert "--no-optimizer" in entry["args"], entry
    assert "OTEL_SERVICE_NAME" in reads and "SSL_CERT_FILE" in reads, reads
    assert marker not in output and certifi.where() not in output  # names only, never values
    needed = re.findall(r'"(\w+)": "\.\.\."', reads)
    environment = _desktop_environment(needed, {**os.environ, **extra})
    parameters = StdioServerParameters(command=entry["command"], args=entry["args"], env=environment)
    async with Client(parameters) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert "notes_save_note" in names and "find_tool" not in names, names


async def test_the_json_banner_snippet_carries_the_log_flags(tmp_path: Path) -> None:
    config = _config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}})
    with running_gateway(config, "--log-level", "debug", "--log-format", "json") as gateway:
        record = _json_banner(gateway.log)
    entry = record["claude_desktop_config"]["mcpServers"]["vmcp"]
    args = entry["args"]
    assert args[args.index("--log-level") + 1] == "debug" and args[args.index("--log-format") + 1] == "json", args
    stderr = tmp_path / "stdio.err"
    environment = _desktop_environment(record["claude_desktop_env"], dict(os.environ))
    parameters = StdioServerParameters(command=entry["command"], args=args, env=environment)
    with stderr.open("w", encoding="utf-8") as sink:
        async with Client(stdio_client(parameters, errlog=sink)) as client:  # type: ignore[arg-type]
            await client.list_tools()
    lines = stderr.read_text(encoding="utf-8").splitlines()
    levels = {json.loads(line)["level"] for line in lines}  # every line a JSON record
    assert "debug" in levels, lines


def _json_banner(log: Path, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"claude_desktop_config"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no banner record in {log}")


def _readme_recipe() -> list[str]:
    """README's "Who may connect" shell block, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Who may connect", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()


def test_the_readmes_first_key_recipe_works_as_written(tmp_path: Path) -> None:
    recipe = [line.replace(".venv/bin/vmcp", str(VMCP_SCRIPT)) for line in _readme_recipe()]
    new_key = recipe[0].split("#", 1)[0]
    assert "auth new-key" in new_key, recipe
    printed = subprocess.run(new_key, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    key = printed.stdout.splitlines()[0].rsplit(": ", 1)[1]
    entry = printed.stdout.splitlines()[2]  # as printed, indentation and all
    script = "\n".join(recipe[1:])
    script = re.sub(r"<the entry[^>]*>", lambda _: entry, script).replace("<the key>", key)
    serve = next(line for line in script.splitlines() if " serve " in line)
    (tmp_path / "recipe.sh").write_text("set -e\n" + script.replace(serve, ""), encoding="utf-8")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        ["bash", "recipe.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=environment
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "subject='alice'" in run.stdout and "groups=['dev']" in run.stdout, run.stdout
