"""A model cache that cannot be written (the image's, on a read-only root filesystem in the pod, or root's under a
plain `docker run`) and holds only the other CPU kind's export: the export goes to the data directory's `models`
(which the deployment mounts writable), and ONNX Runtime serves from there instead of the torch encoder.

Each process runs with the cache bind-mounted read-only in a mount namespace of its own (`unshare -m`): writes
fail with EROFS for every user, root too (CI runs as root, where a chmod 0555 directory stays writable). Where
no mount namespace can be made, the tests are skipped. An export placed in a cache is this machine's real export
hard-linked there (tests/test_export23_shared_cache.py), except in the one test that exports.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.support import demo_backend, free_port, stop_process, torch_mapped, wait_http, write_config
from tests.test_export23_shared_cache import place_export, vectors_ready
from vmcp_opt.optimizer.cpu import int8_weight_peak
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_export import FILES, WEIGHT_PEAKS, export_dir, model_hash

pytestmark = [pytest.mark.slow]

# `sh -c` with $1 the directory to make read-only, then the command: the bind mount exists only in the mount
# namespace `unshare` made, so it goes when the command ends.
MOUNT_READ_ONLY = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
# Loads the model's int8 graph the way the gateway does, with the cache and data directory of argv, and says
# where it loaded from and whether torch was imported on the way.
LOADER = """\
import json, sys
from pathlib import Path
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_encoder import OnnxEncoder
from vmcp_opt.optimizer.onnx_export import ensure_onnx_model

spec = resolve_model(DEFAULT_MODEL)
path = ensure_onnx_model(spec, Path(sys.argv[1]), "int8", fallback=Path(sys.argv[2]))
OnnxEncoder(path, spec.path / "tokenizer.json", spec.max_seq_length, threads=1).encode(["find the weather"])
print(json.dumps({"path": str(path), "torch": "torch" in sys.modules}))
"""


def with_read_only(cache: Path, command: list[str]) -> list[str]:
    """`command` run with `cache` read-only (a bind mount in a mount namespace of the command's own)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", MOUNT_READ_ONLY, "sh", str(cache), *command]


@pytest.fixture(scope="module", autouse=True)
def read_only_mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips the module where this process cannot make a mount namespace with a read-only bind mount."""
    probe = tmp_path_factory.mktemp("read-only-probe")
    try:
        done = subprocess.run(
            with_read_only(probe, ["sh", "-c", 'touch "$0/x"', str(probe)]), capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if done.returncode == 0 or "Read-only file system" not in done.stderr:
        pytest.skip(f"no read-only bind mount in a mount namespace here: {done.stderr.strip()}")


def image_cache(real_export: Path, tmp_path: Path) -> Path:
    """A cache as an image built on a host of the other CPU kind ships it: that kind's export alone."""
    spec = resolve_model(DEFAULT_MODEL)
    other_kind = next(peak for peak in WEIGHT_PEAKS if peak != int8_weight_peak())
    cache = tmp_path / "image-cache"
    place_export(real_export, cache, f"{spec.slug}-{model_hash(spec, other_kind)}")
    return cache


def this_kind_s_export_name() -> str:
    return export_dir(resolve_model(DEFAULT_MODEL), Path(".")).name


def test_models_export_into_a_read_only_cache_exports_into_the_data_directory(
    real_export: Path, tmp_path: Path
) -> None:
    cache, models = image_cache(real_export, tmp_path), tmp_path / "data" / "models"
    shipped = sorted(path.name for path in cache.iterdir())
    config = write_config(tmp_path, {"backends": []})
    done = subprocess.run(
        with_read_only(cache, [sys.executable, "-m", "vmcp_opt", "models", "export", "-c", str(config)]),
        capture_output=True,
        text=True,
        timeout=900,  # the export child's own deadline is 600 s
        check=False,
        env={
            **os.environ,
            "VMCP_OPTIMIZER__MODEL_CACHE": str(cache),
            "VMCP_DATA_DIR": str(models.parent),
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "400",
        },
    )
    output = (done.stdout + done.stderr).replace("\n", "")
    assert done.returncode == 0, output
    exported = models / this_kind_s_export_name()
    assert all((exported / name).is_file() for name in FILES.values()), output
    assert f"model cache {cache} cannot be written (Read-only file system)" in output
    assert str(exported / FILES["fp32"]) in output
    assert sorted(path.name for path in cache.iterdir()) == shipped


def test_the_encoder_loads_this_cpu_kind_s_export_from_the_data_directory_without_torch(
    real_export: Path, tmp_path: Path
) -> None:
    cache, models = image_cache(real_export, tmp_path), tmp_path / "data" / "models"
    placed = place_export(real_export, models, this_kind_s_export_name())
    done = subprocess.run(
        with_read_only(cache, [sys.executable, "-c", LOADER, str(cache), str(models)]),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"path": str(placed / FILES["int8"]), "torch": False}, done.stderr
    assert "exporting" not in done.stderr


@contextlib.contextmanager
def read_only_gateway(cache: Path, config: Path, env: dict[str, str], log: Path) -> Iterator[tuple[int, str]]:
    """A gateway with `cache` read-only: its pid and its MCP URL."""
    port = free_port()
    command = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(with_read_only(cache, command), stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        yield proc.pid, f"http://127.0.0.1:{port}/mcp"  # `exec` all the way: unshare's pid is the gateway's
    finally:
        stop_process(proc)


def test_a_gateway_whose_model_cache_is_read_only_serves_onnx_from_the_data_directory(
    real_export: Path, tmp_path: Path
) -> None:
    cache, models = image_cache(real_export, tmp_path), tmp_path / "data" / "models"
    place_export(real_export, models, this_kind_s_export_name())
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "optimizer": {"enabled": True, "encoder": "onnx", "index_dir": str(tmp_path / "index")},
        },
    )
    env = {
        **os.environ,
        "VMCP_OPTIMIZER__MODEL_CACHE": str(cache),
        "VMCP_DATA_DIR": str(models.parent),
        "HF_HUB_OFFLINE": "1",
    }
    log = tmp_path / "gateway.log"
    with read_only_gateway(cache, config, env, log) as (pid, url):
        anyio.run(vectors_ready, url)
        output = log.read_text(encoding="utf-8", errors="replace").replace("\n", "")
        assert f"kept in {models}" in output, output
        assert "loaded on ONNX Runtime (int8)" in output
        assert torch_mapped(pid) is False
