"""Files that grant access and that others could change: the API keys file (re-read while serving) and the Cedar
policy file (read at start), against a real `vmcp serve` and `vmcp validate`.

Every mode is set with `chmod`, the test directory's included, so nothing depends on the umask.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.support import Gateway, demo_backend, free_port, running_gateway, write_config
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
REFUSED = "lets any local user"
GROUP_WARNING = "lets group"


def post(gateway: Gateway, key: str) -> int:
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {key}"}
    return httpx2.post(gateway.url, json=INITIALIZE, headers=headers, timeout=30).status_code


def keys_file(directory: Path, digest: str, mode: int) -> Path:
    os.chmod(directory, 0o700)
    keys = directory / "keys.yaml"
    keys.write_text(f"keys:\n  - {{sha256: {digest}, subject: alice, groups: [dev]}}\n")
    os.chmod(keys, mode)
    return keys


def gateway_config(directory: Path, policies: str | None = None) -> Path:
    auth: dict[str, object] = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.yaml"}}}
    if policies is not None:
        (directory / "policy.cedar").write_text(policies)
        auth["authorization"] = {"policies": "policy.cedar"}
    return write_config(directory, {"backends": [demo_backend("notes")], "auth": auth})


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def flat(text: str) -> str:
    """Output with its line wrapping undone (a console may wrap long lines)."""
    return " ".join(text.split())


def test_a_world_writable_keys_file_or_directory_is_refused_until_fixed_without_a_restart(tmp_path: Path) -> None:
    alice, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o600)
    with running_gateway(gateway_config(tmp_path)) as gateway:
        assert post(gateway, alice) == 200
        os.chmod(keys, 0o666)  # any local user could now add a key with any groups
        assert post(gateway, alice) == 401
        assert post(gateway, alice) == 401  # still refused, and not logged again
        os.chmod(keys, 0o644)  # the fix the log names
        assert post(gateway, alice) == 200
        os.chmod(tmp_path, 0o777)  # anyone could replace the file
        assert post(gateway, alice) == 401
        os.chmod(tmp_path, 0o1777)  # sticky, as /tmp or a Kubernetes volume's mount: only its owner may
        assert post(gateway, alice) == 200
        os.chmod(tmp_path, 0o700)
        log = flat(gateway.output())
    assert log.count(f"{keys}: mode 0666 {REFUSED} change it") == 1
    assert f"(chmod o-w {keys})" in log
    assert log.count(f"its directory {tmp_path} (mode 0777) {REFUSED} replace the file") == 1
    assert f"chmod o-w {tmp_path}, or chmod +t {tmp_path}" in log
    assert "Traceback" not in log and alice not in log


def test_a_world_writable_keys_file_stops_the_start_and_validate_says_why(tmp_path: Path) -> None:
    _, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o646)
    config = gateway_config(tmp_path)
    done = validate(config)
    assert done.returncode == 2
    assert f"auth.incoming.api_keys: {keys}: mode 0646 {REFUSED} change it" in flat(done.stderr)
    serve = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(free_port())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = subprocess.run(serve, capture_output=True, text=True, timeout=120, env=env)
    assert started.returncode != 0
    assert f"{keys}: mode 0646 {REFUSED}" in flat(started.stdout + started.stderr)
    os.chmod(keys, 0o644)
    assert validate(config).returncode == 0


def test_with_strict_file_modes_off_a_world_writable_keys_file_serves_with_a_warning(tmp_path: Path) -> None:
    """For file systems whose modes mean nothing (WSL drvfs, vboxsf): chmod cannot fix them, so the check can be
    turned off, and the finding is still said."""
    alice, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o666)
    config = gateway_config(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["auth"]["strict_file_modes"] = False
    config = write_config(tmp_path, settings)
    done = validate(config)
    assert done.returncode == 0, done.stderr
    assert f"{keys}: mode 0666 {REFUSED} change it" in flat(done.stderr)
    assert "loaded all the same: auth.strict_file_modes is off" in flat(done.stderr)
    with running_gateway(config) as gateway:
        assert post(gateway, alice) == 200


def test_a_group_writable_keys_file_serves_with_one_warning(tmp_path: Path) -> None:
    alice, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o664)  # a file made under umask 002
    with running_gateway(gateway_config(tmp_path)) as gateway:
        assert post(gateway, alice) == 200
        keys.write_text(keys.read_text() + "# edited\n")  # re-read: the same finding is not logged again
        assert post(gateway, alice) == 200
        log = flat(gateway.output())
    assert log.count(f"{keys} (mode 0664) {GROUP_WARNING}") == 1, log
    assert f"chmod g-w {keys} if they should not" in log
    done = validate(gateway_config(tmp_path))
    assert done.returncode == 0
    assert f"{keys} (mode 0664) {GROUP_WARNING}" in flat(done.stderr)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_keys_file_owned_by_another_user_serves_with_one_warning(tmp_path: Path) -> None:
    alice, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o644)
    with running_gateway(gateway_config(tmp_path)) as gateway:
        assert post(gateway, alice) == 200
        os.chown(keys, 54321, -1)  # a uid no one has: that user could edit the keys
        assert post(gateway, alice) == 200
        assert post(gateway, alice) == 200
        log = flat(gateway.output())
    assert log.count(f"{keys} is owned by uid 54321, not by root, the gateway's user") == 1, log
    done = validate(gateway_config(tmp_path))
    assert done.returncode == 0
    assert f"{keys} is owned by uid 54321" in flat(done.stderr)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_keys_file_in_a_directory_anyone_may_write_is_refused(tmp_path: Path) -> None:
    """Sticky or not (/tmp), anyone may create a file there: one not owned by the gateway's user or root could
    have been put there by any local user while the real one was missing."""
    _, digest = new_key()
    keys = keys_file(tmp_path, digest, 0o644)
    config = gateway_config(tmp_path)
    os.chmod(tmp_path, 0o1777)
    assert validate(config).returncode == 0  # root's own file in a sticky directory: fine
    os.chown(keys, 54321, -1)
    done = validate(config)
    assert done.returncode == 2
    assert f"{keys} is owned by uid 54321 in {tmp_path} (mode 1777), where any local user may create files" in flat(
        done.stderr
    )


def test_a_policy_file_others_could_change_is_refused_or_warned_about(tmp_path: Path) -> None:
    _, digest = new_key()
    keys_file(tmp_path, digest, 0o600)
    config = gateway_config(tmp_path, "permit(principal, action, resource);\n")
    policy = tmp_path / "policy.cedar"
    os.chmod(policy, 0o666)
    done = validate(config)
    assert done.returncode == 2
    assert f"auth.authorization.policies: {policy}: mode 0666 {REFUSED} change it" in flat(done.stderr)
    os.chmod(policy, 0o664)
    done = validate(config)
    assert done.returncode == 0
    assert f"{policy} (mode 0664) {GROUP_WARNING}" in flat(done.stderr)


def test_a_kubernetes_volume_layout_is_accepted_without_a_warning(tmp_path: Path) -> None:
    # A secret or configmap volume: a sticky world-writable mount, the files in a timestamped 0755 directory
    # behind the `..data` symlink, each name a symlink through it.
    _, digest = new_key()
    os.chmod(tmp_path, 0o700)
    mount = tmp_path / "secret"
    version = mount / "..2026_12_07_06_00_00.000000001"
    version.mkdir(parents=True)
    os.chmod(version, 0o755)
    keys_file(version, digest, 0o644)
    os.chmod(version, 0o755)
    (mount / "..data").symlink_to(version.name)
    (mount / "keys.yaml").symlink_to("..data/keys.yaml")
    os.chmod(mount, 0o1777)
    auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": "secret/keys.yaml"}}}
    done = validate(write_config(tmp_path, {"backends": [demo_backend("notes")], "auth": auth}))
    assert done.returncode == 0, done.stderr
    assert "lets" not in done.stderr and "owned by" not in done.stderr


def test_a_config_file_others_could_change_is_warned_about(tmp_path: Path) -> None:
    """The config names the backend commands the gateway runs and its authentication: whoever may write it may do
    both. Warned about, not refused: the file itself says whether modes are strict, and a gateway that ran before
    an upgrade must not stop over it."""
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    os.chmod(tmp_path, 0o700)
    os.chmod(config, 0o644)
    quiet = validate(config)
    assert quiet.returncode == 0, quiet.stderr
    assert "turn authentication off" not in flat(quiet.stderr)
    os.chmod(config, 0o666)
    done = validate(config)
    assert done.returncode == 0, done.stderr
    assert f"{config}: mode 0666 {REFUSED} change it, so any of them could change the gateway's settings" in flat(
        done.stderr
    )
