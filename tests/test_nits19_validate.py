"""`vmcp validate` and `vmcp serve` as a user runs them: every problem of a config in one pass, a missing
script found wherever the interpreter reads it, token_exchange backends no caller could call, and a
debug log without asyncio's selector line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import demo_backend, running_gateway, write_config

SECRET_ENV = {"VMCP_TEST_NITS19_SECRET": "gateway-secret-0123456789"}


def vmcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The tests' own model cache (conftest.py) comes from a variable, which would win over the file's.
    inherited = {k: v for k, v in os.environ.items() if k != "VMCP_OPTIMIZER__MODEL_CACHE"}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**inherited, **(env or {})},
    )


def write(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_validate_reports_an_unknown_model_beside_a_bad_model_cache(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    path = write(tmp_path, {"optimizer": {"model": "all-MiniLM-L7-v2", "model_cache": "a-file"}})
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    problems = checked.stderr.splitlines()[1:]
    assert f"  optimizer.model_cache: {tmp_path / 'a-file'} is a file, not a directory; name a directory" in problems
    assert any(p.startswith("  optimizer.model: model 'all-MiniLM-L7-v2': not a registry id") for p in problems)
    # Any other bad field too, and a model set by a variable is named by it.
    path = write(tmp_path, {"server": {"port": "eighty"}})
    checked = vmcp("validate", "-c", str(path), env={"VMCP_OPTIMIZER__MODEL": "no-such-model"})
    assert checked.returncode == 2, checked.stdout + checked.stderr
    problems = checked.stderr.splitlines()[1:]
    assert any(p.startswith("  server.port: ") for p in problems), problems
    assert any(p.startswith("  optimizer.model (from VMCP_OPTIMIZER__MODEL): model 'no-such-model'") for p in problems)


def test_validate_finds_the_missing_script_past_the_interpreters_options(tmp_path: Path) -> None:
    python = sys.executable
    (tmp_path / "there.py").write_text("", encoding="utf-8")
    backends = [
        {"name": "unbuffered", "command": python, "args": ["-u", "missing.py", "--port", "1"]},
        {"name": "utf8", "command": python, "args": ["-X", "utf8", "-W", "ignore", "gone.py"]},
        {"name": "grouped", "command": python, "args": ["-uBXutf8", "absent"]},
        {"name": "module", "command": python, "args": ["-u", "-m", "mcp_server_time"]},
        {"name": "code", "command": python, "args": ["-c", "print()", "missing.py"]},
        {"name": "present", "command": python, "args": ["-u", "there.py"]},
    ]
    if shutil.which("node"):
        backends += [
            {"name": "node", "command": "node", "args": ["--require", "there.py", "server.mjs"]},
            {"name": "eval", "command": "node", "args": ["-e", "1", "server.mjs"]},
        ]
    checked = vmcp("validate", "-c", str(write(tmp_path, {"backends": backends})))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    missing = {0: "args[1]", 1: "args[4]", 2: "args[1]", 6: "args[2]"}
    names = {0: "missing.py", 1: "gone.py", 2: "absent", 6: "server.mjs"}
    expected = [
        f"warning: backends[{index}].{where}: {tmp_path / names[index]} does not exist (relative paths start at "
        "the backend's cwd, which is the config file's directory unless `cwd` says otherwise); the backend would "
        "not start"
        for index, where in missing.items()
        if index < len(backends)
    ]
    assert checked.stderr.splitlines() == expected


def exchanged_backend() -> dict[str, Any]:
    auth = {
        "type": "token_exchange",
        "token_url": "http://127.0.0.1:1/token",
        "client_id": "gateway",
        "client_secret": {"env": "VMCP_TEST_NITS19_SECRET"},
        "audience": "http://127.0.0.1:1/mcp",
    }
    return {"name": "mail", "transport": "streamable-http", "url": "http://127.0.0.1:1/mcp", "auth": auth}


def test_a_token_exchange_backend_behind_an_anonymous_gateway_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"backends": [demo_backend("notes"), exchanged_backend()]})
    expected = (
        "  backends[1].auth.type: token_exchange exchanges each caller's OAuth access token, but "
        "auth.incoming.mode is anonymous: callers present no token, so every call of this backend's tools would "
        "fail; set auth.incoming.mode: oauth, or give the backend another auth.type"
    )
    checked = vmcp("validate", "-c", str(path), env=SECRET_ENV)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[1:] == [expected]
    # `serve` refuses the same file before it starts anything.
    served = vmcp("serve", "-c", str(path), "--port", "1", env=SECRET_ENV)
    assert served.returncode == 2 and expected.strip() in served.stderr, served.stderr
    # Over stdio the file may also be served over HTTP with OAuth: a warning, as for API-key callers.
    checked = vmcp(
        "validate",
        "-c",
        str(write(tmp_path, {"server": {"transport": "stdio"}, "backends": [exchanged_backend()]})),
        env=SECRET_ENV,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stderr.splitlines() == [
        "warning: backends[0].auth.type: token_exchange exchanges each caller's OAuth access token, but over stdio "
        "(server.transport) the caller is the local user, who presents no token: every call of this backend's "
        "tools would fail (auth.incoming.mode: oauth over HTTP gives callers one)"
    ]


def test_api_key_callers_get_a_warning_and_oauth_callers_nothing(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("[]", encoding="utf-8")
    keys = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}}
    checked = vmcp(
        "validate", "-c", str(write(tmp_path, {"backends": [exchanged_backend()], "auth": keys})), env=SECRET_ENV
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stderr.splitlines() == [
        "warning: backends[0].auth.type: token_exchange exchanges each caller's OAuth access token, but "
        "auth.incoming.mode is api_keys, and an API key is never sent to a token endpoint: every call of this "
        "backend's tools would fail (auth.incoming.mode: oauth over HTTP gives callers one)"
    ]
    oauth = {
        "incoming": {"mode": "oauth", "oauth": {"issuer": "http://127.0.0.1:1", "jwks_url": "http://127.0.0.1:1/jwks"}}
    }
    checked = vmcp(
        "validate", "-c", str(write(tmp_path, {"backends": [exchanged_backend()], "auth": oauth})), env=SECRET_ENV
    )
    assert checked.returncode == 0 and checked.stderr == "", checked.stdout + checked.stderr


@pytest.mark.slow
def test_a_debug_log_shows_the_gateways_lines_without_asyncios_selector(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    with running_gateway(config, "--log-level", "debug", "--log-format", "plain") as gateway:
        output = gateway.output()
    assert "DEBUG vmcp_opt.backends.connection: backend notes" in output, output
    assert "Using selector" not in output, output


def test_validate_warns_of_shared_sessions_without_a_shared_request_state_key(tmp_path: Path) -> None:
    shared = {
        "backends": [demo_backend("notes")],
        "sessions": {"store": "redis"},
        "redis": {"url": "redis://127.0.0.1:1"},
    }
    done = vmcp("validate", "-c", str(write(tmp_path, shared)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: request_state: no key set" in done.stderr and "landing on another replica" in done.stderr
    keyed = {**shared, "request_state": {"key_env": "VMCP_TEST_STATE_KEY"}}
    done = vmcp("validate", "-c", str(write(tmp_path, keyed)), env={"VMCP_TEST_STATE_KEY": "k" * 40})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "request_state" not in done.stderr
