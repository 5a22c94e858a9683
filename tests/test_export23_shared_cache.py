"""A model cache that hosts of two kinds of CPU share (an NFS home, a volume two hosts mount): when one host
tidies the cache, the other kind's current export stays (else that host exports again at each start), an
earlier export goes, and an earlier export a running gateway serves from stays until the gateway stops.

Each process a test starts gets its CPU kind from a `sitecustomize` on PYTHONPATH that replaces
optimizer/cpu.py's `cpu_flags` (the only source of the kind: /proc/cpuinfo), and, to be a gateway of an earlier
version, onnx_export's RECIPE_VERSION. Every export in a test's cache is this machine's real export, hard-linked
under the name the kind or recipe gives it (a graph loads whatever its directory is called), so no export runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, sitecustomize, write_config
from vmcp_opt.optimizer import cpu, onnx_export
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_export import FILES, METADATA_FILE, RECIPE_VERSION, export_dir

pytestmark = [pytest.mark.slow]

SATURATING = "avx2"  # int8 products saturate: 7-bit weight codes
VNNI = "avx2 avx512_vnni"
EARLIER_RECIPE = RECIPE_VERSION - 1
FORCING = """\
import os

if "VMCP_TEST_CPU_FLAGS" in os.environ:
    from vmcp_opt.optimizer import cpu

    cpu.cpu_flags = lambda: frozenset(os.environ["VMCP_TEST_CPU_FLAGS"].split())
if "VMCP_TEST_RECIPE_VERSION" in os.environ:
    from vmcp_opt.optimizer import onnx_export

    onnx_export.RECIPE_VERSION = int(os.environ["VMCP_TEST_RECIPE_VERSION"])
"""


def export_name(flags: str, recipe: int = RECIPE_VERSION) -> str:
    """The export directory's name a process of this CPU kind and recipe looks for."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "cpu_flags", lambda: frozenset(flags.split()))
        patch.setattr(onnx_export, "RECIPE_VERSION", recipe)
        return export_dir(resolve_model(DEFAULT_MODEL), Path(".")).name


def place_export(real: Path, cache: Path, name: str, recipe: int = RECIPE_VERSION) -> Path:
    """`real`'s graphs hard-linked into `cache/name`, with metadata of `recipe`."""
    directory = cache / name
    directory.mkdir(parents=True)
    for graph in dict.fromkeys(FILES.values()):
        try:
            os.link(real / graph, directory / graph)
        except OSError:  # another file system
            shutil.copy(real / graph, directory / graph)
    metadata = json.loads((real / METADATA_FILE).read_text(encoding="utf-8"))
    # Made from this run's model directory: `real` may come from another checkout's (a cache shared by two
    # virtual environments with the same model files), whose exports pruning rightly leaves to that checkout.
    made_from = {"model_dir": str(resolve_model(DEFAULT_MODEL).path.resolve()), "recipe": recipe}
    (directory / METADATA_FILE).write_text(json.dumps({**metadata, **made_from}), encoding="utf-8")
    return directory


def process_env(tmp_path: Path, cache: Path, flags: str, recipe: int = RECIPE_VERSION) -> dict[str, str]:
    return {
        **sitecustomize(tmp_path / "forcing", FORCING),
        "VMCP_TEST_CPU_FLAGS": flags,
        "VMCP_TEST_RECIPE_VERSION": str(recipe),
        "VMCP_OPTIMIZER__MODEL_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "400",
    }


def models_export(tmp_path: Path, cache: Path, flags: str) -> str:
    """`vmcp models export` on a host of this CPU kind: the cached export checked (every graph loaded), the
    cache tidied. Its output."""
    config = write_config(tmp_path, {"backends": []})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "models", "export", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **process_env(tmp_path, cache, flags)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def graph_inode(directory: Path) -> int:
    return (directory / FILES["int8"]).stat().st_ino


def test_a_cache_two_cpu_kinds_share_keeps_each_kind_s_export_and_prunes_an_earlier_one(
    real_export: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "models"
    saturating = place_export(real_export, cache, export_name(SATURATING))
    vnni = place_export(real_export, cache, export_name(VNNI))
    earlier = place_export(real_export, cache, export_name(SATURATING, EARLIER_RECIPE), EARLIER_RECIPE)
    assert len({saturating, vnni, earlier}) == 3

    output = models_export(tmp_path, cache, SATURATING)
    assert not earlier.exists(), output
    assert f"removed {earlier}" in output.replace("\n", "")
    assert saturating.is_dir() and vnni.is_dir(), output

    output = models_export(tmp_path, cache, VNNI)
    assert saturating.is_dir() and vnni.is_dir(), output
    # Each host found its kind's export and loaded every graph in it; neither exported again.
    assert "exporting" not in output
    assert graph_inode(saturating) == graph_inode(vnni) == graph_inode(real_export)
    assert sorted(path.name for path in cache.iterdir()) == sorted([saturating.name, vnni.name])


async def vectors_ready(url: str) -> None:
    """Until find_tool ranks with vectors: the gateway's encoder has loaded its export."""
    async with Client(url) as client:
        with anyio.fail_after(120):
            while True:
                answer = (await client.call_tool("find_tool", {"query": "write down a note"})).structured_content
                assert answer is not None
                if answer["ranking"] == "hybrid":
                    return
                await anyio.sleep(0.3)


def test_an_earlier_export_a_running_gateway_serves_from_stays_until_the_gateway_stops(
    real_export: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "models"
    current = place_export(real_export, cache, export_name(SATURATING))
    earlier = place_export(real_export, cache, export_name(SATURATING, EARLIER_RECIPE), EARLIER_RECIPE)
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "optimizer": {"enabled": True, "encoder": "onnx", "index_dir": str(tmp_path / "index")},
        },
        name="gateway.yaml",
    )
    an_earlier_version = process_env(tmp_path, cache, SATURATING, EARLIER_RECIPE)
    with running_gateway(config, env=an_earlier_version) as gateway:
        anyio.run(vectors_ready, gateway.url)
        assert "loaded on ONNX Runtime (int8)" in gateway.output()
        assert "exporting" not in gateway.output()  # it serves from `earlier`, its recipe's name

        output = models_export(tmp_path, cache, SATURATING)
        assert earlier.is_dir() and current.is_dir(), output
        assert f"kept {earlier}" in output.replace("\n", "")

    output = models_export(tmp_path, cache, SATURATING)
    assert not earlier.exists(), output
    assert current.is_dir()
