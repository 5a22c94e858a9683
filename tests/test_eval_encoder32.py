"""`vmcp eval run` (the real command, in its own process): a results file says how its vectors were made, and a
dataset file cannot make the run hold an unbounded row or file in memory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime

from eval.datasets import MAX_FILE_BYTES, MAX_ROW_BYTES
from tests.test_eval31 import ENV, command, write_beir


def eval_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=120, env=ENV)


def test_results_and_the_table_name_the_encoder_its_settings_and_the_packages_that_embedded(tmp_path: Path) -> None:
    """Before: results.json named the model only, so runs of `--encoder onnx` and `--encoder onnx-int8` could not
    be told apart, nor a README table traced to its encoder."""
    data = write_beir(tmp_path / "data")
    records = {}
    for encoder in ("onnx-int8", "onnx"):
        out = tmp_path / encoder
        done = eval_run("-d", str(data), "--encoder", encoder, "--out", str(out))
        assert done.returncode == 0, done.stderr
        record = json.loads((out / "results.json").read_text(encoding="utf-8"))["embedding"]
        records[encoder] = record
        assert record["encoder"] == encoder
        assert record["model"] == "all-MiniLM-L6-v2"
        assert isinstance(record["export_recipe"], int)
        assert record["packages"]["onnxruntime"] == onnxruntime.__version__
        assert "torch" not in record["packages"]  # the ONNX encoder never imported it
        title = done.stdout.splitlines()[0]
        assert title.startswith("embedding: model all-MiniLM-L6-v2; encoder " + encoder + " (")
        assert f"onnxruntime {onnxruntime.__version__}" in title
    assert records["onnx-int8"]["settings"] == {"encoder": "onnx", "precision": "int8"}
    assert records["onnx"]["settings"] == {"encoder": "onnx", "precision": "fp32"}
    assert records["onnx-int8"]["int8_weight_peak"] in (63, 127) and "int8_weight_peak" not in records["onnx"]


def test_a_row_past_the_row_bound_is_skipped_with_a_line_naming_file_and_line(tmp_path: Path) -> None:
    """Before: a row of any size was read whole and embedded; now it is read past and named."""
    data = write_beir(tmp_path / "data")
    corpus = data / "corpus.jsonl"
    huge = json.dumps({"_id": "huge", "title": "huge tool", "text": "x" * (MAX_ROW_BYTES + 10)})
    corpus.write_text(corpus.read_text(encoding="utf-8") + huge + "\n", encoding="utf-8")
    huge_line = len(corpus.read_text(encoding="utf-8").splitlines())
    out = tmp_path / "out"

    done = eval_run("-d", str(data), "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    named = [line for line in done.stderr.splitlines() if f"{corpus}:{huge_line}: a row of 1.0 MiB" in line]
    assert len(named) == 1 and named[0].endswith("skipped"), done.stderr
    entry = json.loads((out / "results.json").read_text(encoding="utf-8"))["datasets"]["data"]
    assert entry["tools"] == 10  # the ten small rows, not the huge one


def test_a_dataset_file_past_the_file_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Before: a 2 GB corpus or tools.json was read whole (then failed as JSON, or worse, fitted)."""
    good = write_beir(tmp_path / "good")
    big = write_beir(tmp_path / "big")
    toolret = tmp_path / "eval-data" / "toolret_subsets" / "apibank"
    toolret.mkdir(parents=True)
    (toolret / "queries.json").write_text("[]", encoding="utf-8")
    for path in (big / "corpus.jsonl", toolret / "tools.json"):
        with path.open("ab") as handle:  # sparse: no disk spent
            handle.truncate(2 * MAX_FILE_BYTES)
    out = tmp_path / "out"

    done = eval_run("-d", str(good), "-d", str(big), "-d", "apibank", "--data-dir", str(tmp_path / "eval-data"),
                    "--out", str(out))  # fmt: skip

    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipping")]
    assert sorted(skipped) == sorted(
        f"skipping {name}: {path}: 256.0 MiB, more than a dataset file may hold (128.0 MiB): not read"
        for name, path in ((big, big / "corpus.jsonl"), ("apibank", toolret / "tools.json"))
    ), done.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["good"]


def test_a_vector_cache_of_another_onnxruntime_release_is_embedded_again(tmp_path: Path) -> None:
    """The cache was already kept per encoder (`<out>/cache/<encoder>/`, stamped with the encoder and its export
    recipe). Before: not per release of the packages that embedded, so a run after an onnxruntime upgrade reused
    the old release's document vectors while its results named the new one."""
    data, out = write_beir(tmp_path / "data"), tmp_path / "out"
    args = ("-d", str(data), "--methods", "dense", "--encoder", "onnx-int8", "--out", str(out))
    assert eval_run(*args).returncode == 0
    (cache,) = (out / "cache" / "onnx-int8").glob("*.npz")
    with np.load(cache) as npz:
        arrays = dict(npz)
    arrays["packages"] = np.array(json.dumps({"onnxruntime": "0.0.1-older"}))
    np.savez(cache, **arrays)

    done = eval_run(*args)

    assert done.returncode == 0, done.stderr
    with np.load(cache) as npz:  # embedded again, and saved under this release
        assert json.loads(str(npz["packages"]))["onnxruntime"] == onnxruntime.__version__
