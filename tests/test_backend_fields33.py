"""A backend's fields that its transport would not use are refused, each naming the field and what to write
instead, every one of a backend in one pass; `~` in a stdio backend's `command` and `cwd` expands as in
`data_dir`, at launch and in `vmcp validate`'s checks. Real `vmcp validate` and `vmcp serve` processes, real
stdio backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client

from tests.support import DEMO_SERVER, running_gateway, write_config
from vmcp_opt.cli_validate import counted_names

REMOTE_URL = "http://127.0.0.1:9/mcp"


def validate(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def backends_file(directory: Path, backends: list[dict[str, Any]]) -> Path:
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"backends": backends}), encoding="utf-8")
    return path


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines()[1:]]


def test_fields_meant_for_the_other_transport_are_each_refused_naming_what_to_do_instead(tmp_path: Path) -> None:
    config = backends_file(
        tmp_path,
        [
            {"name": "a", "command": "python", "args": ["-m", "x"], "headers": {"Authorization": "Bearer s3cret"}},
            {
                "name": "b",
                "transport": "streamable-http",
                "url": REMOTE_URL,
                "env": {"API_KEY": "k3y"},
                "cwd": "/tmp",
                "args": ["--x"],
            },
            {"name": "c", "transport": "sse", "url": REMOTE_URL, "cwd": "."},
        ],
    )
    result = validate(config)
    assert result.returncode == 2, result.stdout + result.stderr
    said = problems(result)
    remote = (
        "backends[{}].{}: a {} backend is a server at a URL, not a process the gateway starts: `{}` means nothing "
        "to it and would be dropped; "
    )
    assert said == [
        "backends[0].headers: a stdio backend is a process, not an HTTP server: it is sent no headers, so these would "
        'be dropped; pass a credential to it through `env` (`env: {API_KEY: "${API_KEY}"}`) and remove `headers`',
        remote.format(1, "args", "streamable-http", "args")
        + "put what the server takes in its `url`, and remove `args`",
        remote.format(1, "env", "streamable-http", "env")
        + "send a credential in `headers` (or with `auth`), and remove `env`",
        remote.format(1, "cwd", "streamable-http", "cwd") + "remove `cwd`",
        remote.format(2, "cwd", "sse", "cwd") + "remove `cwd`",
    ]
    assert "s3cret" not in result.stderr and "k3y" not in result.stderr


def test_every_misplaced_field_of_one_backend_is_reported_in_one_pass(tmp_path: Path) -> None:
    config = backends_file(
        tmp_path,
        [
            {"name": "a", "command": "python", "url": "http://x/mcp", "headers": {"X": "y"}},
            {"name": "b", "transport": "streamable-http", "url": REMOTE_URL, "command": "python", "env": {"A": "b"}},
        ],
    )
    said = [line.split(":")[0] for line in problems(validate(config))]
    assert said == ["backends[0].url", "backends[0].headers", "backends[1].command", "backends[1].env"]


def test_the_other_transports_fields_written_out_empty_are_accepted(tmp_path: Path) -> None:
    config = backends_file(
        tmp_path,
        [
            {"name": "a", "command": "python", "args": [str(DEMO_SERVER)], "env": {}, "cwd": None, "headers": {}},
            {"name": "b", "transport": "streamable-http", "url": REMOTE_URL, "env": {}, "cwd": None, "args": []},
        ],
    )
    result = validate(config)
    assert result.returncode == 0, result.stderr


def test_a_url_without_its_transport_is_said_once_not_again_for_its_headers(tmp_path: Path) -> None:
    config = backends_file(tmp_path, [{"name": "web", "url": REMOTE_URL, "headers": {"Authorization": "x"}}])
    assert problems(validate(config)) == [
        "backends[0].url: a backend with `url` needs `transport: streamable-http` (or sse); stdio is the default"
    ]


def home_with_launcher(tmp_path: Path) -> Path:
    """A home holding `bin/notes-server`, which runs the demo backend by a path relative to its working
    directory `work/`: it starts only when both `~/bin/...` and `~/work` expand."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "work" / "server.py").write_text(DEMO_SERVER.read_text(encoding="utf-8"), encoding="utf-8")
    launcher = home / "bin" / "notes-server"
    launcher.parent.mkdir()
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} server.py\n", encoding="utf-8")
    launcher.chmod(0o755)
    return home


def test_validate_expands_tilde_in_a_stdio_backends_command_and_cwd(tmp_path: Path) -> None:
    home = home_with_launcher(tmp_path)
    config = backends_file(tmp_path, [{"name": "notes", "command": "~/bin/notes-server", "cwd": "~/work"}])
    result = validate(config, env={"HOME": str(home)})
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_validate_names_both_a_missing_cwd_and_a_missing_command(tmp_path: Path) -> None:
    config = backends_file(tmp_path, [{"name": "t", "command": "~/bin/absent", "cwd": "~/nowhere"}])
    result = validate(config, env={"HOME": str(tmp_path)})
    assert result.returncode == 0
    assert f"backends[0].cwd: {tmp_path / 'nowhere'} is not a directory" in result.stderr, result.stderr
    assert f"backends[0].command: {tmp_path / 'bin' / 'absent'} does not exist" in result.stderr, result.stderr


@pytest.mark.anyio
async def test_serve_launches_a_backend_from_a_tilde_command_in_a_tilde_cwd(tmp_path: Path) -> None:
    home = home_with_launcher(tmp_path)
    backend = {"name": "notes", "command": "~/bin/notes-server", "cwd": "~/work"}
    config = write_config(tmp_path, {"backends": [backend]})
    with running_gateway(config, env={"HOME": str(home)}) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
    assert "notes_save_note" in names, gateway.output()


def test_a_count_of_one_is_singular() -> None:
    assert counted_names("backend", ["time"]) == "1 backend (time)"
    assert counted_names("backend", ["a", "b"]) == "2 backends (a, b)"
    assert counted_names("workflow", []) == "0 workflows"
