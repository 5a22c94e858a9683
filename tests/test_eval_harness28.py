"""`vmcp eval run` and `python -m eval.tune` run for real (each its own process, the real encoder, small BEIR
sets written here): figures do not depend on how many queries are timed, one dataset's failure keeps the
others' results, a damaged vector cache is embedded again, and tuning without data says which flag fixes it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import ROOT

VMCP = str(ROOT / ".venv" / "bin" / "vmcp")
# Near-identical tools, so a ranking turns on small score differences: a query vector embedded in a batch
# of other queries (ONNX int8 quantises a batch's activations as a whole) moves enough of them to show.
# fmt: off
EDITIONS = ["alpha", "banana", "copper", "delta", "ember", "falcon", "garnet", "harbor", "island", "jasper", "kettle",
            "lemon", "marble", "nectar", "orbit", "pepper", "quartz", "river", "saffron", "timber", "umber", "velvet",
            "willow", "xenon", "yarrow", "zephyr", "amber", "birch", "cedar", "dune"]
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Quito", "Perth", "Dublin", "Hanoi", "Austin", "Bern"]
# fmt: on
QUERY_COUNT = 70
# What varies from run to run by design; everything else in a method's row must not move.
TIMING_KEYS = {"latency_ms_p50", "latency_ms_p95", "build_seconds", "latency_queries"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_near_ties(root: Path) -> Path:
    """Thirty weather tools differing by one word, QUERY_COUNT weather queries each judging one relevant."""
    (root / "qrels").mkdir(parents=True)
    tools = [
        {"_id": f"t{i}", "title": "weather tool", "text": f"Get the weather forecast, {word} edition"}
        for i, word in enumerate(EDITIONS)
    ]
    write_jsonl(root / "corpus.jsonl", tools)
    rng = random.Random(7)
    queries = [
        {"_id": f"q{i}", "text": f"what will the weather be in {rng.choice(CITIES)} on day {i}"}
        for i in range(QUERY_COUNT)
    ]
    write_jsonl(root / "queries.jsonl", queries)
    rows = "".join(f"q{i}\tt{rng.randrange(len(EDITIONS))}\t1\n" for i in range(QUERY_COUNT))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return root


def write_small(root: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Two MCP tools and two queries; `metadata` is merged into the first tool's."""
    (root / "qrels").mkdir(parents=True)
    first = {"name": "send_email", "backend": "mail", **(metadata or {})}
    tools = [
        {"_id": "a", "title": "", "text": "send an email", "metadata": first},
        {"_id": "b", "title": "", "text": "read a file", "metadata": {"name": "read_file", "backend": "fs"}},
    ]
    write_jsonl(root / "corpus.jsonl", tools)
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "email bob"}, {"_id": "q2", "text": "open a file"}])
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\tb\t1\n", encoding="utf-8")
    return root


def eval_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMCP, "eval", "run", "--no-plots", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


def flat(text: str) -> str:
    """Rich wraps long lines (temporary paths are long): compare with the breaks read as spaces."""
    return " ".join(text.split())


def quality(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {
        name: {
            method: {key: value for key, value in metrics.items() if key not in TIMING_KEYS}
            for method, metrics in entry["methods"].items()
        }
        for name, entry in results["datasets"].items()
    }


def test_figures_are_the_same_whatever_the_latency_sample(tmp_path: Path) -> None:
    """Before: the untimed queries were embedded 64 to a batch, which find_tool never does, so apibank's dense
    nDCG@10 read 62.6 with every query timed and 62.3 with one; here dense read 13.6 and 13.4."""
    data = write_near_ties(tmp_path / "ties")
    methods = "bm25,dense,toolhive,optimizer-cold"
    runs = {}
    for sample in ("0", "1", "9"):
        out = tmp_path / f"sample{sample}"
        done = eval_run("-d", str(data), "--methods", methods, "--latency-sample", sample, "--out", str(out))
        assert done.returncode == 0, done.stderr
        runs[sample] = quality(out)
    assert runs["1"] == runs["0"]
    assert runs["9"] == runs["0"]
    methods_run = runs["0"]["ties"]
    assert list(methods_run) == methods.split(",")
    assert all(0 < row["ndcg@10"] < 1 for row in methods_run.values())  # not a set every method gets right


def test_a_tool_whose_original_name_is_not_text_skips_its_dataset_only(tmp_path: Path) -> None:
    """Before: a TypeError traceback, exit 1, and no results.json for the dataset that had finished."""
    good = write_small(tmp_path / "good")
    bad = write_small(tmp_path / "bad", {"original_name": {"x": 1}})
    out = tmp_path / "out"
    done = eval_run("-d", str(good), "-d", str(bad), "--methods", "bm25,optimizer-cold", "--out", str(out))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert f"skipping {bad}: {bad}/corpus.jsonl:1: `metadata.original_name` must be a string" in flat(done.stderr)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["good"]
    assert list(results["skipped"]) == [str(bad)]


# `vmcp eval run` itself, with the harness's per-dataset step failing on the dataset named "second": a failure
# no input reaches any more (the ones known are refused as the dataset loads), so it is provoked here.
FAILING_RUN = """
import sys
import eval.harness
from eval.cli import eval_app

real = eval.harness.run_dataset

def failing(dataset, *args, **kwargs):
    if dataset.name == "second":
        raise RuntimeError("the disk went away")
    return real(dataset, *args, **kwargs)

eval.harness.run_dataset = failing
eval_app(["run", *sys.argv[1:]])
"""


def test_a_dataset_that_fails_keeps_the_results_of_those_finished(tmp_path: Path) -> None:
    """The run ends with one line and exit 1, but the datasets scored before the failure are written, marked
    as a failed run. Before: a traceback and no results.json at all."""
    first = write_small(tmp_path / "first")
    second = write_small(tmp_path / "second")
    out = tmp_path / "out"
    args = ["-d", str(first), "-d", str(second), "--methods", "bm25,optimizer-cold", "--no-plots", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", FAILING_RUN, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = flat(done.stderr)
    assert f"failed on second: results of first written to {out / 'results.partial.json'}" in message
    assert "failed on second: RuntimeError: the disk went away" in message
    results = json.loads((out / "results.partial.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["first"]
    assert results["failed"] == {"dataset": "second", "error": "RuntimeError: the disk went away"}
    assert set(results["datasets"]["first"]["methods"]) == {"bm25", "optimizer-cold"}


def test_a_damaged_vector_cache_is_named_and_embedded_again(tmp_path: Path) -> None:
    """Before: every later run ended in zipfile.BadZipFile, a traceback that did not name the file."""
    data = write_small(tmp_path / "data")
    out = tmp_path / "out"
    first = eval_run("-d", str(data), "--methods", "dense", "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = quality(out)
    (cache,) = (out / "cache").rglob("*.npz")
    cache.write_bytes(cache.read_bytes()[:200])
    again = eval_run("-d", str(data), "--methods", "dense", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr, again.stderr
    assert f"cannot read the vector cache {cache}" in flat(again.stderr)
    assert quality(out) == before
    with np.load(cache) as saved:  # written whole again, readable
        assert len(saved["keys"]) == 2
    assert not [path.name for path in cache.parent.iterdir() if path != cache]  # no temporary file left


def test_two_runs_saving_one_vector_cache_at_once_both_finish(tmp_path: Path) -> None:
    """Before: both wrote `<model>.tmp.npz` and renamed it, so one found it gone (FileNotFoundError)."""
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from eval.embed import SharedEmbedder\n"
        "class Model:\n"
        "    model_id = 'stand-in'; dimensions = 4; kind = 'stand-in'\n"
        "    def encode_documents_with_tokens(self, texts, progress=False, tokens=False):\n"
        "        return np.ones((len(texts), 4), np.float32), []\n"
        "shared = SharedEmbedder(Model(), Path(sys.argv[1]))\n"
        "for i in range(150):\n"
        "    shared.encode_documents([f'{sys.argv[2]} {i} {j}' for j in range(50)])\n"
    )
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(cache), tag], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert [path.name for path in cache.iterdir()] == ["stand-in.npz"]


def tune(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eval.tune", "--queries", "5", "--out", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "VMCP_EVAL_DATA": str(tmp_path / "elsewhere")},
    )


def test_tune_without_data_names_its_data_dir_flag(tmp_path: Path) -> None:
    """Before: a DatasetError traceback saying "see --data-dir", a flag eval.tune did not have."""
    for args, where in (
        ((), tmp_path / "elsewhere"),
        (("--data-dir", str(tmp_path / "nowhere")), tmp_path / "nowhere"),
    ):
        done = tune(tmp_path, *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("tune.py: error: missing the ToolLens set"), last
        assert f"{where}/toollens/corpus.jsonl; see --data-dir" in last
