"""`vmcp eval run` (the real command, in its own process) on datasets the OS will not read, ids given twice and
corpora with no words, and around the files a run leaves in its `--out`: one line per problem, and no run
ends, or spoils another's results, over what it could have gone on without."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import ROOT

VMCP = str(ROOT / ".venv" / "bin" / "vmcp")
WORDS = ["weather", "email", "file", "calendar", "invoice", "repository", "alarm", "translate", "music", "stock"]


def write_beir(root: Path, corpus: Sequence[Mapping[str, object]] | None = None) -> Path:
    """A small BEIR directory: one tool and one query per word, each query's tool relevant."""
    (root / "qrels").mkdir(parents=True)
    rows = corpus or [
        {"_id": f"t{i}", "title": f"{word} tool", "text": f"Handles {word}"} for i, word in enumerate(WORDS)
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    queries = [{"_id": f"q{i}", "text": f"help me with {word}"} for i, word in enumerate(WORDS)]
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    judgements = "".join(f"q{i}\tt{i}\t1\n" for i in range(len(WORDS)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judgements, encoding="utf-8")
    return root


def command(*args: str, plots: bool = False) -> list[str]:
    return [
        VMCP,
        "eval",
        "run",
        "--plots" if plots else "--no-plots",
        "--latency-sample",
        "2",
        "--methods",
        "bm25",
        *args,
    ]


# A line never wrapped, however long pytest's tmp_path is.
ENV = {**os.environ, "COLUMNS": "10000"}


def eval_run(*args: str, plots: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args, plots=plots), capture_output=True, text=True, timeout=timeout, env=ENV)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_a_dataset_file_the_os_will_not_read_skips_that_set_with_one_line(tmp_path: Path) -> None:
    good = write_beir(tmp_path / "good")
    corpus_dir = write_beir(tmp_path / "corpusdir")
    (corpus_dir / "corpus.jsonl").unlink()
    (corpus_dir / "corpus.jsonl").mkdir()
    qrels_dir = write_beir(tmp_path / "qrelsdir")
    (qrels_dir / "qrels" / "test.tsv").unlink()
    (qrels_dir / "qrels" / "test.tsv").mkdir()
    toolret = tmp_path / "data" / "toolret_subsets" / "apibank"
    (toolret / "tools.json").mkdir(parents=True)
    (toolret / "queries.json").write_text("[]", encoding="utf-8")

    done = eval_run(
        "-d", str(good), "-d", str(corpus_dir), "-d", str(qrels_dir), "-d", "apibank",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for path in (corpus_dir / "corpus.jsonl", qrels_dir / "qrels" / "test.tsv", toolret / "tools.json"):
        [line] = lines_with(done.stderr, f"{path}: cannot read it: Is a directory")
        assert line.startswith("skipping "), line
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["good"]
    assert set(results["skipped"]) == {str(corpus_dir), str(qrels_dir), "apibank"}


def write_toolret(data_dir: Path, task: str, query_ids: list[str]) -> Path:
    """A ToolRet task under `data_dir`: one tool per word, one query per id, each labelled with a tool."""
    root = data_dir / "toolret_subsets" / task
    root.mkdir(parents=True)
    tools = [{"id": word, "documentation": {"name": word, "description": f"Handles {word}"}} for word in WORDS]
    queries = [
        {"id": qid, "query": f"help me with {WORDS[i]}", "labels": [{"id": WORDS[i]}]}
        for i, qid in enumerate(query_ids)
    ]
    (root / "tools.json").write_text(json.dumps(tools), encoding="utf-8")
    (root / "queries.json").write_text(json.dumps(queries), encoding="utf-8")
    return root


def test_a_query_id_given_twice_is_refused_naming_both_places(tmp_path: Path) -> None:
    good = write_beir(tmp_path / "good")
    beir = write_beir(tmp_path / "dupquery")
    with (beir / "queries.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "q1", "text": "a second text for q1"}) + "\n")
    toolret = write_toolret(tmp_path / "data", "apibank", ["a", "b", "a"])

    done = eval_run(
        "-d", str(good), "-d", str(beir), "-d", "apibank",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    expected = f"skipping {beir}: {beir}/queries.jsonl line 11: query id 'q1' is already the id of line 2"
    assert len(lines_with(done.stderr, expected)) == 1, done.stderr
    expected = f"skipping apibank: {toolret}/queries.json entry 3: query id 'a' is already the id of entry 1"
    assert len(lines_with(done.stderr, expected)) == 1, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["good"]


def test_a_corpus_of_ids_alone_is_refused_in_one_line_and_wordless_rows_are_counted(tmp_path: Path) -> None:
    id_only = write_beir(tmp_path / "idonly", corpus=[{"_id": f"t{i}"} for i in range(len(WORDS))])
    some: list[dict[str, object]] = [
        {"_id": f"t{i}", "title": f"{word} tool", "text": f"Handles {word}"} for i, word in enumerate(WORDS)
    ]
    some[3] = {"_id": "t3"}
    some[5] = {"_id": "t5", "title": "", "text": None}
    some_id_only = write_beir(tmp_path / "someidonly", corpus=some)

    done = eval_run("-d", str(id_only), "-d", str(some_id_only), "--out", str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "RuntimeWarning" not in done.stderr, done.stderr
    expected = f"skipping {id_only}: {id_only}/corpus.jsonl: no row has a title or text"
    assert len(lines_with(done.stderr, expected)) == 1, done.stderr
    expected = f"{some_id_only}: corpus.jsonl: 2 rows have no title or text"
    assert len(lines_with(done.stderr, expected)) == 1, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["someidonly"]


def test_a_vector_cache_that_cannot_be_saved_is_named_once_and_the_run_goes_on(tmp_path: Path) -> None:
    first = write_beir(tmp_path / "first")
    # Texts of its own: the second set embeds and tries to save again.
    other = [{"_id": f"t{i}", "title": f"{word} helper", "text": f"Works on {word}"} for i, word in enumerate(WORDS)]
    second = write_beir(tmp_path / "second", corpus=other)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").write_text("a file where the cache directory goes\n", encoding="utf-8")

    done = eval_run("-d", str(first), "-d", str(second), "--methods", "bm25,dense", "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    [warning] = lines_with(done.stderr, "cannot save the vector cache")
    assert f"{out}/cache/" in warning and warning.endswith("going on without it"), warning
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["datasets"]) == ["first", "second"]
    assert set(results["datasets"]["second"]["methods"]) == {"bm25", "dense"}


def wait_blocked_on_fifo(pid: int, deadline: float = 90) -> None:
    """Until the process sits in a FIFO's open (the sets before it are scored by then): Linux names that wait
    `wait_for_partner` (fs/pipe.c)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never blocked on the FIFO")


def interrupted_run(*args: str) -> tuple[int, str]:
    """A run sent Ctrl-C while it opens a FIFO's corpus: its exit code and stderr."""
    proc = subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # A shell without job control starts background commands with SIGINT ignored; a terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_blocked_on_fifo(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def test_an_interrupted_run_leaves_the_last_complete_results_and_plots_alone(tmp_path: Path) -> None:
    first = write_beir(tmp_path / "first")
    blocked = write_beir(tmp_path / "blocked")
    (blocked / "corpus.jsonl").unlink()
    os.mkfifo(blocked / "corpus.jsonl")
    out = tmp_path / "out"
    complete = eval_run("-d", str(first), "--out", str(out), plots=True)
    assert complete.returncode == 0, complete.stderr
    kept = {path.name: path.read_bytes() for path in out.iterdir() if path.suffix in (".json", ".png")}
    assert {"results.json", "latencies.json"} < set(kept) and any(name.endswith(".png") for name in kept)

    code, stderr = interrupted_run("-d", str(first), "-d", str(blocked), "--out", str(out))

    assert code == 130, stderr
    assert "Traceback" not in stderr
    partial = out / "results.partial.json"
    [line] = lines_with(stderr, f"interrupted: results of first written to {partial}")
    assert "results.json and plots left as they were" in line
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name in kept} == kept
    results = json.loads(partial.read_text(encoding="utf-8"))
    assert results["interrupted"] is True and list(results["datasets"]) == ["first"]

    again = eval_run("-d", str(first), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert not partial.exists() and not (out / "latencies.partial.json").exists()


def test_a_second_run_into_the_same_out_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = write_beir(tmp_path / "first")
    blocked = write_beir(tmp_path / "blocked")
    (blocked / "corpus.jsonl").unlink()
    os.mkfifo(blocked / "corpus.jsonl")
    out = tmp_path / "out"
    holder = subprocess.Popen(
        command("-d", str(first), "-d", str(blocked), "--out", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_blocked_on_fifo(holder.pid)  # scored `first`, holding the lock

        second = eval_run("-d", str(first), "--out", str(out))
    finally:
        holder.kill()
        holder.wait()

    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    [line] = lines_with(second.stderr, f"{out} is in use by another vmcp eval run (pid {holder.pid})")
    assert line.endswith("give this run another --out"), line
    assert not (out / "results.json").exists()  # the second run wrote nothing


def test_every_model_is_resolved_before_the_first_one_runs(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "data")
    out = tmp_path / "out"

    done = eval_run("-d", str(data), "-m", "all-MiniLM-L6-v2", "-m", "nosuchmodel", "--out", str(out))

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "model 'nosuchmodel': not a registry id" in " ".join(done.stderr.split())
    assert "timing" not in done.stderr  # no model was loaded, no dataset run
    assert not out.exists() or not any(out.rglob("results.json"))
