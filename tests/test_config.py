"""Configuration: precedence, validation by field path, env references, discovered mode, the CLI's exit codes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest

from tests.support import ROOT, write_config
from vmcp_opt.backends.discovery import read_client_config
from vmcp_opt.config import ConfigError, VmcpConfig, load_config


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_defaults_fill_every_section(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"backends": [{"name": "t", "command": "python"}]}))
    assert config.server.port == 8000
    assert config.server.transport == "streamable-http"
    assert config.aggregation.conflict_resolution == "prefix"
    assert config.backends[0].transport == "stdio"
    assert VmcpConfig.model_validate({}).optimizer.enabled is True  # tests' write_config turns it off


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


def test_backends_keyed_by_name_as_clients_write_them_are_told_to_be_a_list(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, {"backends": {"time": {"command": "x"}}}))
    assert problems == [
        "backends: Input should be a valid list, not a mapping: write each entry as a list item (`- name: ...`)"
    ]


def test_duplicate_backend_names_rejected(tmp_path: Path) -> None:
    problems = problems_of(
        write_config(tmp_path, {"backends": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]})
    )
    assert any("repeated: a" in p for p in problems), problems


def test_the_gateways_own_tool_sources_are_reserved_backend_names(tmp_path: Path) -> None:
    # A backend named `vmcp` would share the meta-tools' source (and their policy exemption); `workflows`, the
    # composite tools' `Backend::"workflows"`.
    backends = [{"name": "vmcp", "command": "x"}, {"name": "workflows", "command": "y"}, {"name": "ok", "command": "z"}]
    problems = problems_of(write_config(tmp_path, {"backends": backends}))
    assert len(problems) == 2, problems
    assert problems[0].startswith("backends[0].name: 'vmcp' is reserved: it is the source of the gateway's own tools")
    assert problems[1].startswith("backends[1].name: 'workflows' is reserved: it is the source of the gateway's own")
    assert all("choose another name" in p for p in problems)


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
    config = load_config(
        write_config(tmp_path, {"discovery": {"mode": "discovered", "path": "client.json"}}),
        discover=read_client_config,
    )
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


def test_a_secret_reference_in_args_is_refused_with_a_hint_to_use_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cret-for-args")
    monkeypatch.setenv("DATA_ROOT", "/srv/data")
    backend = {"name": "svc", "command": "python", "args": ["--token", "${API_TOKEN}", "--root", "${DATA_ROOT}"]}
    path = write_config(tmp_path, {"backends": [backend]})
    [problem] = problems_of(path)
    assert problem.startswith("backends[0].args[1]: ${API_TOKEN} would put a secret on the backend's command line")
    assert "env: {API_TOKEN: '${API_TOKEN}'}" in problem and "s3cret-for-args" not in problem
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "args[1]" in result.stderr and "env" in result.stderr
    backend["args"] = ["--root", "${DATA_ROOT}"]  # a reference that does not look secret expands as before
    assert load_config(write_config(tmp_path, {"backends": [backend]})).backends[0].args == ["--root", "/srv/data"]


def test_limits_have_defaults_and_follow_the_usual_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"limits": {"list_changed_interval": 0.5}})
    monkeypatch.setenv("VMCP_LIMITS__MAX_RESULT_BYTES", "1000")
    limits = load_config(path).limits
    assert (limits.max_result_bytes, limits.list_changed_interval, limits.argument_check_timeout) == (1000, 0.5, 1.0)
    monkeypatch.delenv("VMCP_LIMITS__MAX_RESULT_BYTES")
    assert problems_of(write_config(tmp_path, {"limits": {"max_result_bytes": 0}})) == [
        "limits.max_result_bytes: Input should be greater than 0"
    ]


def test_discovered_mode_skips_entries_that_launch_this_gateway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = tmp_path / "claude_desktop_config.json"
    servers = {
        "vmcp": {"command": "/somewhere/else/bin/vmcp", "args": ["serve", "--stdio"]},  # the banner's snippet
        "gateway": {"command": "/opt/venv/bin/vmcp", "args": ["serve", "--stdio", "-c", "/etc/vmcp.yaml"]},
        "as-module": {"command": "python3.11", "args": ["-m", "vmcp_opt", "serve", "--stdio"]},
        "time": {"command": "python", "args": ["-m", "mcp_server_time"]},
    }
    client.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.backends.discovery"):
        backends = read_client_config(client)
    assert [backend.name for backend in backends] == ["time"]
    skipped = [record.getMessage() for record in caplog.records]
    assert len(skipped) == 3 and all("launches this gateway" in line for line in skipped), skipped


def test_a_discovered_config_needs_a_client_config_reader(tmp_path: Path) -> None:
    (tmp_path / "client.json").write_text('{"mcpServers": {}}', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"discovery": {"mode": "discovered", "path": "client.json"}}))
    assert caught.value.problems[0].startswith("discovery.mode:")


def test_config_module_imports_nothing_else_of_the_package() -> None:
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, vmcp_opt.config; print(sorted(m for m in sys.modules if 'vmcp' in m))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The config package: the document and its sections, each a module of its own, and nothing else.
    loaded = [name for name in eval(modules) if name != "vmcp_opt"]
    assert loaded and all(name == "vmcp_opt.config" or name.startswith("vmcp_opt.config.") for name in loaded), loaded
    expected = modules.strip()
    assert modules.strip() == expected


def test_each_config_file_gets_an_index_directory_of_its_own_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = Path(os.environ["VMCP_DATA_DIR"])  # tests/conftest.py: never the user's own
    (tmp_path / "one").mkdir()
    first, second = write_config(tmp_path / "one", {}), write_config(tmp_path, {})
    assert load_config(first).index_dir() == load_config(first).index_dir()
    assert load_config(first).index_dir() != load_config(second).index_dir()
    for path in (first, second):
        index_dir = load_config(path).index_dir()
        assert index_dir.parent == data_dir / "indexes" and index_dir.name.startswith("vmcp-")
    relative = write_config(tmp_path, {"optimizer": {"index_dir": "idx"}, "data_dir": "state"})
    assert load_config(relative).index_dir() == tmp_path / "idx"
    monkeypatch.delenv("VMCP_DATA_DIR")  # it takes precedence over the file
    assert load_config(relative).data_dir_path() == tmp_path / "state"


def test_the_data_dir_defaults_to_the_per_user_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMCP_DATA_DIR")
    config = VmcpConfig.model_validate({})
    assert config.data_dir_path() == Path(platformdirs.user_data_dir("vmcp-opt", appauthor=False))
    assert config.index_dir() == config.data_dir_path() / "indexes" / "default"  # computed, never created here


def test_an_installed_package_finds_its_bundled_demo(tmp_path: Path) -> None:
    # The wheel's layout (pyproject.toml: examples/ is force-included as vmcp_opt/examples), away from the
    # source tree: the demo is found inside the package.
    site = tmp_path / "site-packages"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "vmcp_opt", site / "vmcp_opt", ignore=ignore)
    shutil.copytree(ROOT / "examples", site / "vmcp_opt" / "examples", ignore=ignore)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = {"capture_output": True, "text": True, "cwd": tmp_path, "env": env, "check": True}
    found = subprocess.run([sys.executable, "-c", "import vmcp_opt.config as c; print(c.DEFAULT_CONFIG_PATH)"], **run)
    assert found.stdout.strip() == str(site / "vmcp_opt" / "examples" / "demo.yaml")
    validated = subprocess.run([sys.executable, "-m", "vmcp_opt", "validate"], **run)
    assert "7 backends" in validated.stdout


def test_validate_reports_field_errors_duplicate_names_and_unset_variables_in_one_pass(tmp_path: Path) -> None:
    backends = [
        {"name": "web", "transport": "sse"},  # a field error: no url
        {"name": "docs", "command": "x", "env": {"TOKEN": "${VMCP_TEST_UNSET_ONE}"}},
        {"name": "docs", "transport": "streamable-http", "url": "http://127.0.0.1:1/${VMCP_TEST_UNSET_TWO}"},
    ]
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(write_config(tmp_path, {"backends": backends}))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "backends[0].url: a sse backend needs `url`",
        "backends: names must be unique, repeated: docs",
        "backends[1].env.TOKEN: references ${VMCP_TEST_UNSET_ONE}, which is not set in the environment",
        "backends[2].url: references ${VMCP_TEST_UNSET_TWO}, which is not set in the environment",
    ]


def test_cross_checks_and_unset_variables_are_reported_together_when_every_field_is_valid(tmp_path: Path) -> None:
    backends = [{"name": "a", "command": "x", "args": ["${VMCP_TEST_UNSET_ONE}"]}, {"name": "a", "command": "y"}]
    problems = problems_of(write_config(tmp_path, {"backends": backends, "aggregation": {"priority": ["zz"]}}))
    assert problems == [
        "backends: names must be unique, repeated: a",
        "aggregation.priority: unknown backends ['zz']",
        "backends[0].args[0]: references ${VMCP_TEST_UNSET_ONE}, which is not set in the environment",
    ]


def test_the_diagnostics_listener_takes_a_port_or_host_and_port_and_needs_metrics_on(tmp_path: Path) -> None:
    def metrics(**settings: object) -> Path:
        return write_config(tmp_path, {"backends": [], "telemetry": {"metrics": settings}})

    assert load_config(metrics(enabled=True, listen="9464")).telemetry.metrics.address() == ("127.0.0.1", 9464)
    assert load_config(metrics(enabled=True, listen="[::1]:9464")).telemetry.metrics.address() == ("::1", 9464)
    assert load_config(metrics(enabled=True)).telemetry.metrics.address() is None
    (bad_port,) = problems_of(metrics(enabled=True, listen="127.0.0.1:http"))
    assert bad_port.startswith("telemetry.metrics.listen:") and "1 to 65535" in bad_port
    (off,) = problems_of(metrics(listen="9464"))
    assert off.startswith("telemetry.metrics") and "needs `enabled: true`" in off


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [["validate"], ["serve", "--port", "0"]])
def test_a_misspelt_model_is_a_config_error_naming_optimizer_model(tmp_path: Path, command: list[str]) -> None:
    path = write_config(tmp_path, {"optimizer": {"enabled": True, "model": "nosuchmodel"}})
    result = vmcp(*command, "-c", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (
        "  optimizer.model: model 'nosuchmodel': not a registry id (all-MiniLM-L6-v2) nor a local model directory"
        in result.stderr.splitlines()
    )


def test_a_model_directory_without_a_tokenizer_is_refused_by_validate(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}', encoding="utf-8")
    result = vmcp("validate", "-c", str(write_config(tmp_path, {"optimizer": {"model": str(model)}})))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"  optimizer.model: model '{model}': no tokenizer.json in {model}" in result.stderr.splitlines()


@pytest.mark.parametrize("command", [["validate"], ["serve", "--port", "0"]])
def test_a_config_path_that_is_a_directory_or_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe x")
    cases = {
        tmp_path: "cannot read: is a directory, not a config file",
        binary: "cannot read: not UTF-8 text (byte 0xff at offset 0); save it as UTF-8",
    }
    for path, reason in cases.items():
        result = vmcp(*command, "-c", str(path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert f"  {path}: {reason}" in result.stderr.splitlines()


def vmcp_with_env(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def test_a_bad_value_from_a_variable_or_a_flag_is_named_by_its_source_and_the_file_s_by_its_path(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, {"server": {"port": 70000}, "timeouts": {"call": -1}})
    env = {"VMCP_OPTIMIZER__ENABLED": "maybe", "VMCP_TIMEOUTS__CALL": "-2", "VMCP_OPTIMIZER__ENABLD": "false"}
    result = vmcp_with_env(env, "serve", "--port", "99999", "-c", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[1:] == [
        "  server.port (from --port): Input should be less than or equal to 65535",
        "  optimizer.enabled (from VMCP_OPTIMIZER__ENABLED): Input should be a valid boolean, unable to interpret input",
        "  optimizer.enabld (from VMCP_OPTIMIZER__ENABLD): unknown key (did you mean VMCP_OPTIMIZER__ENABLED?)",
        "  timeouts.call (from VMCP_TIMEOUTS__CALL): Input should be greater than 0",
    ]
    file_only = vmcp_with_env({}, "validate", "-c", str(path))
    assert file_only.stderr.splitlines()[1:] == [
        "  server.port: Input should be less than or equal to 65535",
        "  timeouts.call: Input should be greater than 0",
    ]


def test_a_variable_that_is_not_json_where_json_is_needed_is_one_line_naming_it(tmp_path: Path) -> None:
    result = vmcp_with_env({"VMCP_BACKENDS": "[bad"}, "validate", "-c", str(write_config(tmp_path, {})))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[1:] == [
        "  VMCP_BACKENDS: cannot read the value: Expecting value: line 1 column 2 (char 1)"
    ]


@pytest.mark.parametrize("command", [["validate"], ["serve", "--port", "0"]])
def test_a_variable_naming_no_config_section_is_refused_with_the_section_meant(
    tmp_path: Path, command: list[str]
) -> None:
    env = {"VMCP_OPTIMIZR__ENABLED": "false", "VMCP_XYZZY__PORT": "1"}
    result = vmcp_with_env(env, *command, "-c", str(write_config(tmp_path, {})), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    problems = result.stderr.splitlines()[1:]
    assert (
        problems[0]
        == "  VMCP_OPTIMIZR__ENABLED: unknown config section 'optimizr' (did you mean VMCP_OPTIMIZER__ENABLED?)"
    )
    assert problems[1].startswith("  VMCP_XYZZY__PORT: unknown config section 'xyzzy' (sections: aggregation, auth,")
    assert len(problems) == 2


def test_nested_variables_of_real_sections_and_plain_vmcp_variables_still_pass(tmp_path: Path) -> None:
    env = {
        "VMCP_SERVER__PORT": "9100",
        "VMCP_TELEMETRY__METRICS__ENABLED": "false",
        "VMCP_RATE_LIMITS__LOG_INTERVAL": "30",
        "VMCP_REQUEST_STATE__KEY_ENV": "SOME_KEY",
        "SOME_KEY": "0123456789abcdef" * 4,  # the key it names must be there (`vmcp validate` reads it)
        "VMCP_CREDENTIAL": "x",
        "VMCP_TEST_ANYTHING": "x",
        "VMCP_MEASURE_SPARES": "1",
    }
    result = vmcp_with_env(env, "validate", "-c", str(write_config(tmp_path, {})))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_backend_url_problem_is_reported_at_the_url_field(tmp_path: Path) -> None:
    backends = [
        {"name": "ok", "command": "python"},
        {"name": "web", "transport": "streamable-http", "url": "ftp://example.com/mcp"},
        {"name": "local", "transport": "stdio"},
        {"name": "remote", "url": "http://example.com/mcp"},  # `transport` forgotten: the default is stdio
    ]
    result = vmcp_with_env({}, "validate", "-c", str(write_config(tmp_path, {"backends": backends})))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[1:] == [
        "  backends[1].url: must start with http:// or https://, got 'ftp://example.com/mcp'",
        "  backends[2].command: a stdio backend needs `command`",
        "  backends[3].url: a backend with `url` needs `transport: streamable-http` (or sse); stdio is the default",
    ]


@pytest.mark.parametrize("name", ["DB_PASS", "SMTP_PWD", "GITHUB_PAT"])
def test_a_password_named_by_its_usual_short_suffix_is_a_secret_in_args(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "hunter2")
    path = write_config(tmp_path, {"backends": [{"name": "db", "command": "python", "args": ["${" + name + "}"]}]})
    [problem] = problems_of(path)
    assert "would put a secret on the backend's command line" in problem and "hunter2" not in problem
