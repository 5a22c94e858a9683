"""The persisted index's failure modes, by the real `vmcp` command and a real gateway on real files: a save
that does not reach the disk fails `vmcp index build`; a lock holder that is alive but stuck (stopped,
paused) neither hangs `vmcp index build`, `vmcp index usage --clear` nor a gateway's shutdown, and is named;
a damaged local model directory is a config error, not a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.model_registry import resolve_model

pytestmark = [pytest.mark.slow]

SLUG = resolve_model("all-MiniLM-L6-v2").slug
TOOLS = [
    {"name": "notes_save", "backend": "notes", "description": "Save a note with a title and a text."},
    {"name": "clock_now", "backend": "clock", "description": "The current time in a timezone."},
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def vmcp(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**ENV, **(env or {})},
    )


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(tool) + "\n" for tool in TOOLS), encoding="utf-8")
    return path


@contextmanager
def stuck_holder(lock: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process that takes `lock` as the gateway's code does, then is stopped (Ctrl-Z, a paused
    container): alive, so the kernel never releases its lock."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, time; from pathlib import Path; from vmcp_opt.optimizer.file_lock import exclusive\n"
        "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        proc.send_signal(signal.SIGSTOP)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_build_fails_when_its_vectors_do_not_replace_the_file(tmp_path: Path) -> None:
    # As on a full disk over an older vectors.npz: the file is there, but not what this build embedded.
    (tmp_path / "idx" / SLUG / "vectors.npz").mkdir(parents=True)
    done = vmcp("index", "build", "--from-jsonl", str(tools_file(tmp_path)), "--index-dir", str(tmp_path / "idx"))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "index not saved" in done.stderr and "Is a directory" in done.stderr, done.stderr
    assert "tools indexed" not in done.stdout and "Traceback" not in done.stderr


def test_build_past_a_stuck_lock_holder_names_it_and_saves(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    with stuck_holder(index_dir / SLUG / ".vectors.lock") as holder:
        # The lock's wait is optimizer.bulk_process_timeout: the longest another update may legitimately take.
        done = vmcp(
            "index",
            "build",
            "--from-jsonl",
            str(tools_file(tmp_path)),
            "--index-dir",
            str(index_dir),
            env={"VMCP_OPTIMIZER__BULK_PROCESS_TIMEOUT": "1"},
            timeout=90,
        )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"process {holder.pid} (" in done.stderr and "updating without the lock" in done.stderr, done.stderr
    assert "2 tools indexed" in done.stdout
    assert (index_dir / SLUG / "vectors.npz").is_file()


def test_usage_clear_names_a_stuck_lock_holder_instead_of_hanging(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    (index_dir / "usage.json").parent.mkdir(parents=True)
    (index_dir / "usage.json").write_text("{}", encoding="utf-8")
    with stuck_holder(index_dir / ".usage.json.lock") as holder:
        done = vmcp("index", "usage", "--clear", "--index-dir", str(index_dir), timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "cannot clear the usage history" in done.stderr and f"process {holder.pid} (" in done.stderr
    assert (index_dir / "usage.json").exists()  # nothing deleted without the lock


def test_gateway_stops_while_a_stuck_process_holds_the_usage_lock(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    config = write_config(
        tmp_path,
        {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(index_dir)}},
    )
    with stuck_holder(index_dir / ".usage.json.lock") as holder, running_gateway(config) as gateway:

        async def one_task() -> None:  # two tools in one session: a co-usage the shutdown's save must write
            async with Client(gateway.url, mode="legacy") as client:
                for name, arguments in (("notes_save_note", {"title": "t", "text": "x"}), ("notes_whoami", {})):
                    result = await client.call_tool(name, arguments)
                    assert not result.is_error, result.content

        anyio.run(one_task)
        gateway.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while gateway.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gateway.proc.poll() is not None, "the gateway still runs 60 s after SIGTERM"
        log = gateway.output()
    assert "could not save the usage history" in log and f"process {holder.pid} (" in log, log[-3000:]


def test_a_damaged_local_model_directory_is_a_config_error(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"hidden_size": 384}), encoding="utf-8")
    (model / "tokenizer.json").write_text("{}", encoding="utf-8")
    (model / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": "x"}', encoding="utf-8")
    config = write_config(tmp_path, {"optimizer": {"enabled": True, "model": str(model)}})
    done = vmcp("validate", "-c", str(config))
    assert done.returncode == 2, (done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert "word_embedding_dimension" in output and "1_Pooling" in output, output
    assert "Traceback" not in output
