"""`vmcp index list | prune` over the index directories under `<data_dir>/indexes/`, and the owner file a gateway
on the default placement writes there (optimizer/index_dirs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from .support import running_gateway, write_config

DAY = 86_400


def vmcp_index(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, with no stdin (as in CI) and, unless `env` says otherwise, the test's data directory."""
    command = [sys.executable, "-m", "vmcp_opt", "index", *args]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=environment
    )


def owned(directory: Path, config: Path | str, days_ago: float) -> Path:
    """An index directory whose owner file names `config`, last used `days_ago`."""
    directory.mkdir(parents=True)
    (directory / "usage.json").write_text("{}", encoding="utf-8")
    stamp = datetime.fromtimestamp(time.time() - days_ago * DAY, UTC).isoformat(timespec="seconds")
    (directory / "owner.json").write_text(json.dumps({"config": str(config), "last_used": stamp}), encoding="utf-8")
    return directory


def unknown(directory: Path, days_ago: float) -> Path:
    """An index directory from before owner files: files only, the newest `days_ago`."""
    (directory / "all-minilm-l6-v2").mkdir(parents=True)
    for path in (directory / "catalogue.json", directory / "all-minilm-l6-v2" / "vectors.npz"):
        path.write_bytes(b"x" * 5000)
        when = time.time() - days_ago * DAY
        os.utime(path, (when, when))
    return directory


def row(output: str, name: str) -> list[str]:
    """The cells of `vmcp index list`'s row for `name` (not a terminal: one line each)."""
    line = next(line for line in output.splitlines() if line.startswith(f"│ {name} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_a_gateway_on_the_default_index_dir_says_whose_it_is_and_prune_leaves_it_while_it_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path, {"backends": [], "optimizer": {"enabled": True}})
    env = {"VMCP_DATA_DIR": str(data)}
    with running_gateway(config, env=env, wait_ready=False):
        [directory] = (data / "indexes").iterdir()
        assert directory.name.startswith("vmcp-")
        owner = json.loads((directory / "owner.json").read_text(encoding="utf-8"))
        assert owner["config"] == str(config.resolve())
        assert abs(datetime.fromisoformat(owner["last_used"]).timestamp() - time.time()) < DAY
        listed = vmcp_index("list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert row(listed.stdout, directory.name)[1:3] == [str(config.resolve()), "yes"]
        assert row(listed.stdout, directory.name)[-1] == "yes"  # its lock is held
        # As if its config had moved away long ago: pruning would take it, but for the gateway holding it.
        owned(tmp_path / "scratch", tmp_path / "moved.yaml", days_ago=100)
        os.replace(tmp_path / "scratch" / "owner.json", directory / "owner.json")
        pruned = vmcp_index("prune", "--yes", env=env)
        assert pruned.returncode == 0, pruned.stderr
        assert f"kept {directory.name} (its config file is gone): a running gateway holds it" in pruned.stdout
        assert "removed" not in pruned.stdout
        assert (directory / "owner.json").is_file()
    pruned = vmcp_index("prune", "--yes", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert (
        f"removed {directory.name} (config {tmp_path / 'moved.yaml'}, gone; its config file is gone)" in pruned.stdout
    )
    assert not directory.exists()


def test_list_names_each_directory_s_config_whether_it_exists_and_its_last_use(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text("backends: []\n", encoding="utf-8")
    indexes = tmp_path / "data" / "indexes"
    owned(indexes / "vmcp-aaaaaaaaaaaa", config, days_ago=2)
    owned(indexes / "old-bbbbbbbbbbbb", tmp_path / "old.yaml", days_ago=3)
    unknown(indexes / "demo-cccccccccccc", days_ago=40)
    listed = vmcp_index("list", "--data-dir", str(tmp_path / "data"))
    assert listed.returncode == 0, listed.stderr
    _name, path, exists, size, last_used, running = row(listed.stdout, "vmcp-aaaaaaaaaaaa")
    assert (path, exists, running) == (str(config), "yes", "no")
    assert last_used.endswith("(2 days ago)")
    assert row(listed.stdout, "old-bbbbbbbbbbbb")[1:3] == [str(tmp_path / "old.yaml"), "no"]
    _name, path, exists, size, last_used, running = row(listed.stdout, "demo-cccccccccccc")
    assert (path, exists) == ("unknown", "-")
    assert last_used.endswith("(40 days ago, newest file)")
    assert size.endswith("KB")
    assert "3 directories" in listed.stdout


def test_prune_removes_what_a_gone_config_or_age_left_and_asks_first(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text("backends: []\n", encoding="utf-8")
    data = tmp_path / "data"
    indexes = data / "indexes"
    current = owned(indexes / "vmcp-aaaaaaaaaaaa", config, days_ago=2)
    moved = owned(indexes / "old-bbbbbbbbbbbb", tmp_path / "old.yaml", days_ago=2)
    # Gone, but used an hour ago: its config may be in a container's mount namespace, not gone (GONE_GRACE_DAYS).
    recent = owned(indexes / "recent-eeeeeeeeeeee", tmp_path / "elsewhere.yaml", days_ago=1 / 24)
    stale = owned(indexes / "stale-dddddddddddd", config, days_ago=45)
    forgotten = unknown(indexes / "demo-cccccccccccc", days_ago=40)
    env = {"VMCP_DATA_DIR": str(data)}  # read as --data-dir's default

    refused = vmcp_index("prune", env=env)  # no stdin to ask on
    assert refused.returncode == 2
    assert "refusing to remove 3 index directories without confirmation" in refused.stderr
    assert "--yes" in refused.stderr
    assert all(path.is_dir() for path in (current, moved, stale, forgotten, recent))

    dry = vmcp_index("prune", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would remove old-bbbbbbbbbbbb" in dry.stdout and "would remove stale-dddddddddddd" in dry.stdout
    assert "would free" in dry.stdout
    assert all(path.is_dir() for path in (current, moved, stale, forgotten))

    younger = vmcp_index("prune", "--yes", "--older-than", "60", env=env)  # the gone config's only
    assert younger.returncode == 0, younger.stderr
    assert not moved.exists() and stale.is_dir() and forgotten.is_dir()

    pruned = vmcp_index("prune", "--yes", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed stale-dddddddddddd" in pruned.stdout and "unused for 45 days" in pruned.stdout
    assert "removed demo-cccccccccccc (config unknown; unused for 40 days)" in pruned.stdout
    assert "freed " in pruned.stdout and "in 2 directories" in pruned.stdout
    assert current.is_dir() and not stale.exists() and not forgotten.exists()
    assert recent.is_dir()  # its config out of sight, but used within GONE_GRACE_DAYS


def test_prune_never_follows_a_link_out_of_the_indexes_directory(tmp_path: Path) -> None:
    outside = owned(tmp_path / "precious", tmp_path / "gone.yaml", days_ago=400)
    unknown(outside / "inner", days_ago=400)
    indexes = tmp_path / "data" / "indexes"
    indexes.mkdir(parents=True)
    (indexes / "escape-eeeeeeeeeeee").symlink_to(outside, target_is_directory=True)
    pruned = vmcp_index("prune", "--yes", "--older-than", "0", "--data-dir", str(tmp_path / "data"))
    assert pruned.returncode == 0, pruned.stderr
    assert "nothing to prune" in pruned.stdout
    assert (outside / "owner.json").is_file() and (outside / "inner" / "catalogue.json").is_file()
    assert (indexes / "escape-eeeeeeeeeeee").is_symlink()
    listed = vmcp_index("list", "--data-dir", str(tmp_path / "data"))
    assert row(listed.stdout, "escape-eeeeeeeeeeee")[1] == "(a symbolic link: never pruned)"
