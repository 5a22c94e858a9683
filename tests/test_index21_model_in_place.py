"""A model replaced in place keeps its id (a local directory's is its path): its persisted vectors are another
model's, which the index must embed again rather than rank new query vectors against. A copy of the same model
(new file times, same bytes) re-embeds nothing.

The model directory here is the bundled model's files, linked, with its own `config_sentence_transformers.json`,
whose document and query prompts change between builds (as an e5-style model put in its place would). Its ONNX
graphs do not depend on that file: the bundled model's export serves it, linked into a private model cache
under the names the encoder looks for, so no export runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, ModelSpec, resolve_model
from vmcp_opt.optimizer.onnx_export import export_dir, model_hash

pytestmark = [pytest.mark.slow]

PROMPTS = "config_sentence_transformers.json"
TOOLS = [
    {"name": "forecast", "backend": "util", "description": "Weather forecast for a city for the next days."},
    {"name": "convert", "backend": "util", "description": "Convert an amount of money between currencies."},
]


def local_model(tmp_path: Path) -> Path:
    bundled = resolve_model(DEFAULT_MODEL).path
    model = tmp_path / "embedder"
    for source in bundled.rglob("*"):
        if source.is_file() and source.name != PROMPTS:
            target = model / source.relative_to(bundled)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    shutil.copy(bundled / PROMPTS, model / PROMPTS)
    return model


def spec_of(model: Path) -> ModelSpec:
    return resolve_model.__wrapped__(str(model))  # type: ignore[attr-defined]  # read anew: its files changed


def link_export(cache: Path, model: Path, real_export: Path) -> None:
    """The bundled model's export (tests/conftest.py), under the name `model`'s files give it now."""
    link = export_dir(spec_of(model), cache)
    if not link.exists():
        link.symlink_to(real_export)


def build(tmp_path: Path, model: Path, cache: Path) -> str:
    config = tmp_path / "vmcp.yaml"
    config.write_text(json.dumps({"backends": [], "optimizer": {"model": str(model)}}), encoding="utf-8")
    tools = tmp_path / "tools.jsonl"
    tools.write_text("".join(json.dumps(tool) + "\n" for tool in TOOLS), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "build", "-c", str(config), "--from-jsonl", str(tools)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "VMCP_OPTIMIZER__MODEL_CACHE": str(cache)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def embedded(output: str) -> int:
    found = re.search(r"embedded (\d+), reused (\d+)", output)
    assert found, output
    return int(found.group(1))


def test_a_model_whose_files_changed_in_place_is_embedded_again_and_a_copy_is_not(
    tmp_path: Path, real_export: Path
) -> None:
    model, cache = local_model(tmp_path), tmp_path / "models"
    cache.mkdir()
    link_export(cache, model, real_export)
    assert embedded(build(tmp_path, model, cache)) == 2

    settings = json.loads((model / PROMPTS).read_text(encoding="utf-8"))
    settings["prompts"] = {"query": "query: ", "document": "passage: "}
    (model / PROMPTS).write_text(json.dumps(settings), encoding="utf-8")
    link_export(cache, model, real_export)
    rebuilt = build(tmp_path, model, cache)
    assert embedded(rebuilt) == 2, rebuilt  # not the earlier prompts' vectors
    assert "built by another version of model" in rebuilt

    # The same bytes again, as a reinstall or a copy leaves them: new times, nothing to embed.
    (model / PROMPTS).write_bytes((model / PROMPTS).read_bytes())
    os.utime(model / PROMPTS, ns=(1, 1))
    assert model_hash(spec_of(model))  # the export's own key is by content too: the link above still serves
    assert embedded(build(tmp_path, model, cache)) == 0
