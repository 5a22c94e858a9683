"""A `VMCP_` variable that overrides a value the config file sets is said, not silent: the image's
`VMCP_DATA_DIR` put the index and usage history on an emptyDir while the file named a PersistentVolume.
The precedence stays (flags > VMCP_ variables > file > defaults); `vmcp validate` and `vmcp serve` say which
setting, the file's value and the variable, and never the value of a setting that names a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port, running_gateway


def _config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"optimizer": {"enabled": False}, **config}), encoding="utf-8")
    return path


def _validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


def _lines_naming(text: str, setting: str, variable: str) -> list[str]:
    """The lines naming both (the banner names the variables it read, without a setting)."""
    return [line for line in text.splitlines() if setting in line and variable in line]


def test_validate_says_which_variable_overrides_the_files_data_dir(tmp_path: Path) -> None:
    volume, image = tmp_path / "volume", tmp_path / "image"
    config = _config(tmp_path, {"data_dir": str(volume)})
    result = _validate(config, {"VMCP_DATA_DIR": str(image)})
    assert result.returncode == 0, result.stderr
    [warning] = _lines_naming(result.stderr, "data_dir", "VMCP_DATA_DIR")
    assert str(volume) in warning and str(image) in warning


def test_validate_names_a_nested_setting_by_its_path_and_variable(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "baked").mkdir()
    config = _config(tmp_path, {"optimizer": {"enabled": False, "model_cache": str(tmp_path / "models")}})
    result = _validate(config, {"VMCP_OPTIMIZER__MODEL_CACHE": str(tmp_path / "baked")})
    assert result.returncode == 0, result.stderr
    [warning] = _lines_naming(result.stderr, "optimizer.model_cache", "VMCP_OPTIMIZER__MODEL_CACHE")
    assert str(tmp_path / "models") in warning and str(tmp_path / "baked") in warning


def test_no_warning_when_the_variable_agrees_with_the_file_or_the_file_is_silent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    same = _config(tmp_path, {"data_dir": str(data_dir)})
    assert _lines_naming(_validate(same, {"VMCP_DATA_DIR": str(data_dir)}).stderr, "data_dir", "VMCP_DATA_DIR") == []
    unset = _config(tmp_path, {})
    assert _lines_naming(_validate(unset, {"VMCP_DATA_DIR": str(data_dir)}).stderr, "data_dir", "VMCP_DATA_DIR") == []


def test_a_secret_settings_override_is_named_without_either_value(tmp_path: Path) -> None:
    config = _config(tmp_path, {"redis": {"password_env": "FILE_REDIS_PASSWORD"}})
    result = _validate(config, {"VMCP_REDIS__PASSWORD_ENV": "IMAGE_REDIS_PASSWORD"})
    assert result.returncode == 0, result.stderr
    assert len(_lines_naming(result.stderr, "redis.password_env", "VMCP_REDIS__PASSWORD_ENV")) == 1
    assert "FILE_REDIS_PASSWORD" not in result.stderr and "IMAGE_REDIS_PASSWORD" not in result.stderr


def test_serve_logs_the_override_at_start_but_not_a_variable_a_flag_outranks(tmp_path: Path) -> None:
    volume, image = tmp_path / "volume", tmp_path / "image"
    # The file's port and VMCP_SERVER__PORT both lose to --port (running_gateway's): the variable is not in
    # effect, so there is nothing to warn of.
    config = _config(tmp_path, {"backends": [], "data_dir": str(volume), "server": {"port": free_port()}})
    env = {"VMCP_DATA_DIR": str(image), "VMCP_SERVER__PORT": str(free_port())}
    with running_gateway(config, env=env) as gateway:
        output = gateway.output()
    [warning] = _lines_naming(output, "data_dir", "VMCP_DATA_DIR")
    assert str(volume) in warning and str(image) in warning
    assert _lines_naming(output, "server.port", "VMCP_SERVER__PORT") == []
