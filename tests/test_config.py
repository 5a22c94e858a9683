"""Configuration: precedence, validation by field path, env references, discovered mode, the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import write_config
from vmcp_opt.config import ConfigError, load_config


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_defaults_fill_every_section(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"backends": [{"name": "t", "command": "python"}]}))
    assert config.server.port == 8000
    assert config.server.transport == "streamable-http"
    assert config.aggregation.conflict_resolution == "prefix"
    assert config.optimizer.enabled is False
    assert config.backends[0].transport == "stdio"


def test_bad_fields_are_reported_by_path(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "server": {"port": 70000},
            "backends": [
                {"name": "ok", "command": "python"},
                {"name": "web", "transport": "streamable-http"},
                {"name": "bad name!", "command": "x"},
            ],
        },
    )
    problems = problems_of(path)
    assert any(p.startswith("server.port:") for p in problems), problems
    assert any(p.startswith("backends[1]") and "needs `url`" in p for p in problems), problems
    assert any(p.startswith("backends[2].name:") for p in problems), problems


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    problems = problems_of(
        write_config(tmp_path, {"servr": {}, "backends": [{"name": "a", "command": "x", "comand": "y"}]})
    )
    assert any(p.startswith("servr:") and "unknown key" in p for p in problems), problems
    assert any(p.startswith("backends[0].comand:") for p in problems), problems


def test_duplicate_backend_names_rejected(tmp_path: Path) -> None:
    problems = problems_of(
        write_config(tmp_path, {"backends": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]})
    )
    assert any("repeated: a" in p for p in problems), problems


def test_environment_overrides_file_and_cli_overrides_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, {"server": {"port": 9000}, "optimizer": {"enabled": False}})
    monkeypatch.setenv("VMCP_SERVER__PORT", "9100")
    monkeypatch.setenv("VMCP_OPTIMIZER__ENABLED", "true")
    config = load_config(path)
    assert config.server.port == 9100
    assert config.optimizer.enabled is True
    assert load_config(path, {"server": {"port": 9200}}).server.port == 9200


def test_env_references_expand_and_missing_ones_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TOKEN", "s3cret")
    backend = {"name": "gh", "transport": "streamable-http", "url": "http://127.0.0.1:1/mcp"}
    path = write_config(tmp_path, {"backends": [{**backend, "headers": {"Authorization": "Bearer ${DEMO_TOKEN}"}}]})
    assert load_config(path).backends[0].headers["Authorization"] == "Bearer s3cret"
    path = write_config(
        tmp_path, {"backends": [{**backend, "headers": {"Authorization": "Bearer ${NOT_SET_ANYWHERE}"}}]}
    )
    problems = problems_of(path)
    assert problems == [
        "backends[0].headers.Authorization: references ${NOT_SET_ANYWHERE}, which is not set in the environment"
    ]


@pytest.mark.parametrize("key", ["mcpServers", "servers"])
def test_discovered_mode_reads_client_config_files(tmp_path: Path, key: str) -> None:
    client = tmp_path / "client.json"
    client.write_text(
        json.dumps(
            {
                key: {
                    "time server": {"command": "python", "args": ["-m", "mcp_server_time"], "env": {"A": "1"}},
                    "docs": {"url": "http://127.0.0.1:9001/mcp"},
                    "old": {"type": "sse", "url": "http://127.0.0.1:9002/sse"},
                    "off": {"command": "x", "disabled": True},
                }
            }
        )
    )
    config = load_config(write_config(tmp_path, {"discovery": {"mode": "discovered", "path": "client.json"}}))
    by_name = {b.name: b for b in config.backends}
    assert set(by_name) == {"time-server", "docs", "old"}
    assert by_name["time-server"].args == ["-m", "mcp_server_time"]
    assert by_name["docs"].transport == "streamable-http"
    assert by_name["old"].transport == "sse"


def test_cli_validate_exits_non_zero_naming_the_field(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"backends": [{"name": "web", "transport": "sse"}]})
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "backends[0]" in result.stderr and "needs `url`" in result.stderr


def test_cli_validate_accepts_the_bundled_demo() -> None:
    result = subprocess.run([sys.executable, "-m", "vmcp_opt", "validate"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "7 backends" in result.stdout
