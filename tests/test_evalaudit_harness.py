"""`vmcp eval run` and `python -m eval.tune` as a demanding user runs them (the real commands, each in its own
process, on small data written here): figures that cannot be trusted are refused, long work shows progress,
outputs say where they went, and a misspelt tuning variant is not run as the default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

VMCP = str(ROOT / ".venv" / "bin" / "vmcp")
WORDS = ["weather", "email", "file", "calendar", "invoice", "repository", "alarm", "translate", "music", "stock"]
# Queries past the timed sample: more than eval/embed.py's PROGRESS_MIN (64), so their embedding shows a bar.
QUERY_COUNT = 70
LATENCY_SAMPLE = 2


def write_beir(root: Path) -> Path:
    """One tool per word, QUERY_COUNT queries each naming a word, its tool relevant."""
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"t{i}", "title": f"{word} tool", "text": f"Handles {word}"} for i, word in enumerate(WORDS)]
    _write_jsonl(root / "corpus.jsonl", corpus)
    queries = [{"_id": f"q{i}", "text": f"please help me with {WORDS[i % len(WORDS)]} {i}"} for i in range(QUERY_COUNT)]
    _write_jsonl(root / "queries.jsonl", queries)
    rows = "".join(f"q{i}\tt{i % len(WORDS)}\t1\n" for i in range(QUERY_COUNT))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return root


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def eval_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMCP, "eval", "run", "--latency-sample", str(LATENCY_SAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )


def flat(text: str) -> str:
    """Rich wraps long lines (temporary paths are long): compare with the breaks read as spaces."""
    return " ".join(text.split())


def test_a_tool_id_given_twice_is_refused_not_scored_above_100_points(tmp_path: Path) -> None:
    """Before: the duplicate was ranked twice, so its relevance counted twice and nDCG@10 read 106."""
    data = write_beir(tmp_path / "dup")
    with (data / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "t0", "title": "weather tool copy", "text": "Handles weather"}) + "\n")
    out = tmp_path / "out"
    done = eval_run("-d", str(data), "--methods", "bm25", "--no-plots", "--out", str(out))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    expected = f"skipping {data}: {data}/corpus.jsonl line 11: tool id 't0' is already the id of line 1"
    assert expected in flat(done.stderr)
    assert not (out / "results.json").exists()


def test_a_toolret_task_with_a_tool_id_given_twice_is_refused(tmp_path: Path) -> None:
    task = tmp_path / "toolret_subsets" / "apibank"
    task.mkdir(parents=True)
    tools = [{"id": name, "documentation": {"name": name, "description": f"{name} things"}} for name in WORDS[:3]]
    (task / "tools.json").write_text(json.dumps([*tools, tools[1]]), encoding="utf-8")
    queries = [{"id": "q0", "query": "weather please", "labels": [{"id": "weather", "relevance": 1}]}]
    (task / "queries.json").write_text(json.dumps(queries), encoding="utf-8")
    done = eval_run("-d", "apibank", "--data-dir", str(tmp_path), "--methods", "bm25", "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    assert f"{task}/tools.json entry 4: tool id 'email' is already the id of entry 2" in flat(done.stderr)


def test_judgements_naming_no_known_tool_or_query_are_counted_aloud(tmp_path: Path) -> None:
    """Before: left out without a word, though a relevant tool missing from the corpus raises Recall."""
    data = write_beir(tmp_path / "data")
    with (data / "qrels" / "test.tsv").open("a", encoding="utf-8") as handle:
        handle.write("q0\tt99\t1\nq1\tt98\t1\nq999\tt0\t1\n")
    done = eval_run("-d", str(data), "--methods", "bm25", "--no-plots", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    expected = (
        f"{data}: qrels/test.tsv: 2 judgements name a tool not in corpus.jsonl and 1 queries are not in "
        "queries.jsonl; left out of the scores"
    )
    assert expected in flat(done.stderr)


def test_untimed_queries_are_embedded_with_a_bar_and_not_at_all_for_bm25_alone(tmp_path: Path) -> None:
    """Before: ToolLens' 1,577 untimed queries were embedded up front with no output for about a minute,
    even for `--methods bm25`, which never embeds a query."""
    data = write_beir(tmp_path / "data")
    label = f"embedding {QUERY_COUNT - LATENCY_SAMPLE} queries"
    dense = eval_run("-d", str(data), "--methods", "bm25,dense", "--no-plots", "--out", str(tmp_path / "dense"))
    assert dense.returncode == 0, dense.stderr
    assert label in dense.stderr
    bm25 = eval_run("-d", str(data), "--methods", "bm25", "--no-plots", "--out", str(tmp_path / "bm25"))
    assert bm25.returncode == 0, bm25.stderr
    assert "queries" not in "".join(line for line in bm25.stderr.splitlines() if line.startswith("embedding"))
    # The same figures either way: priming only moves when a query is embedded, never what it scores.
    scores = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("dense", "bm25")]
    assert (
        scores[0]["datasets"]["data"]["methods"]["bm25"]["ndcg@10"]
        == (scores[1]["datasets"]["data"]["methods"]["bm25"]["ndcg@10"])
    )


def test_the_run_says_where_its_plots_went(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "data")
    out = tmp_path / "out"
    done = eval_run("-d", str(data), "--methods", "bm25", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"plots: recall_at_k.png, ndcg_at_10.png, latency.png in {out}" in flat(done.stderr)
    assert all((out / name).is_file() for name in ("recall_at_k.png", "ndcg_at_10.png", "latency.png"))


def tune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eval.tune", "--out", "/nonexistent/never-written", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_tune_refuses_a_misspelt_variant_instead_of_running_the_default_under_its_name() -> None:
    done = tune("--queries", "5", "cold", "no-splt")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown variants no-splt; known: base, cold," in done.stderr
    assert "Traceback" not in done.stderr


def test_tune_refuses_zero_queries_and_bad_overrides_by_name() -> None:
    zero = tune("--queries", "0", "base")
    assert zero.returncode == 2 and "--queries needs a positive number, got 0" in zero.stderr, zero.stderr
    bad = tune("--queries", "5", "--set", "dense_weight=abc", "cold")
    assert bad.returncode == 2 and "--set: dense_weight: Input should be a valid number" in bad.stderr, bad.stderr
    extra = tune("--queries", "5", "--set", "no_such_field=1", "cold")
    assert extra.returncode == 2 and "--set: no_such_field: Extra inputs are not permitted" in extra.stderr


def test_the_gain_line_names_the_baselines_the_run_had() -> None:
    from eval.harness import gains_summary

    both = {
        "datasets": {
            "d": {"methods": {"bm25": {"ndcg@10": 0.4}, "dense": {"ndcg@10": 0.5}, "optimizer": {"ndcg@10": 0.6}}}
        }
    }
    assert gains_summary(both) == "optimizer nDCG@10 over max(bm25, dense): d +10.0; mean +10.0"
    bm25_only = {"datasets": {"d": {"methods": {"bm25": {"ndcg@10": 0.4}, "optimizer": {"ndcg@10": 0.6}}}}}
    assert gains_summary(bm25_only) == "optimizer nDCG@10 over bm25: d +20.0; mean +20.0"
