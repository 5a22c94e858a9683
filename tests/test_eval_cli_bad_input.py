"""`vmcp eval run` as a user runs it (the real command, in its own process) on data that is wrong, and
interrupted with Ctrl-C: one clear line per problem, and nothing that finished is lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from eval.datasets import DatasetError, load_dataset
from tests.support import ROOT

VMCP = str(ROOT / ".venv" / "bin" / "vmcp")
WORDS = ["weather", "email", "file", "calendar", "invoice", "repository", "alarm", "translate", "music", "stock"]
# More tools than SharedEmbedder's PROGRESS_MIN, so embedding them shows a bar.
TOOL_COUNT = 70


def write_beir(root: Path, *, qrels_header: bool = True) -> Path:
    """A small BEIR directory: TOOL_COUNT plain tools, one query per word, its tool relevant."""
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": f"t{i}", "title": f"{WORDS[i % len(WORDS)]} tool {i}", "text": f"Handles {WORDS[i % len(WORDS)]} {i}"}
        for i in range(TOOL_COUNT)
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus), encoding="utf-8")
    queries = [{"_id": f"q{i}", "text": f"help me with {word}"} for i, word in enumerate(WORDS)]
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    header = "query-id\tcorpus-id\tscore\n" if qrels_header else ""
    rows = "".join(f"q{i}\tt{i}\t1\n" for i in range(len(WORDS)))
    (root / "qrels" / "test.tsv").write_text(header + rows, encoding="utf-8")
    return root


def eval_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMCP, "eval", "run", "--no-plots", "--latency-sample", "2", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "10000"},  # a line never wrapped, however long pytest's tmp_path is
    )


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: _append(d / "qrels" / "test.tsv", "q0\tt1\thigh\n"), "the score 'high' is not a number"),
        (lambda d: _append(d / "corpus.jsonl", '["a list"]\n'), "expected a JSON object, got list"),
        (lambda d: _append(d / "queries.jsonl", '{"text": "no id"}\n'), "a query row needs `_id`"),
        (lambda d: (d / "corpus.jsonl").write_bytes(b'{"_id": "t0", "text": "caf\xe9"}\n'), "not UTF-8 text"),
        (
            lambda d: _append(
                d / "corpus.jsonl", json.dumps({"_id": "x", "metadata": {"name": "x", "input_schema": 3}})
            ),
            "`metadata.input_schema` must be a JSON object",
        ),
        (lambda d: (d / "corpus.jsonl").write_text(""), "holds no tools"),
        (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq99\tt0\t1\n"), "no query has"),
    ],
    ids=["bad-score", "row-not-object", "query-without-id", "not-utf8", "schema-not-object", "no-tools", "no-judged"],
)
def test_a_malformed_beir_directory_is_a_dataset_error_naming_the_problem(
    tmp_path: Path, break_it: object, message: str
) -> None:
    data = write_beir(tmp_path / "data")
    break_it(data)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(str(data))


def test_a_toolret_task_of_the_wrong_shape_is_a_dataset_error(tmp_path: Path) -> None:
    task = tmp_path / "toolret_subsets" / "apibank"
    task.mkdir(parents=True)
    (task / "tools.json").write_text('[{"id": "t1"}]')
    with pytest.raises(DatasetError, match=re.escape("queries.json")):
        load_dataset("apibank", tmp_path)  # queries.json missing
    (task / "queries.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"not the ToolRet layout.*documentation"):
        load_dataset("apibank", tmp_path)
    (task / "tools.json").write_text("{broken")
    with pytest.raises(DatasetError, match=re.escape("tools.json: not valid JSON")):
        load_dataset("apibank", tmp_path)


def test_qrels_without_a_header_keep_their_first_judgement(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "data", qrels_header=False)
    assert "q0" in load_dataset(str(data)).qrels


def test_a_bad_dataset_is_skipped_in_one_line_and_the_others_are_scored_with_embedding_progress(
    tmp_path: Path,
) -> None:
    """Before: a malformed second set ended a run of minutes with a traceback and no results; a second
    BEIR directory named like the first overwrote its rows; embedding showed no progress."""
    good, bad, twin = (
        write_beir(tmp_path / "a" / "data"),
        write_beir(tmp_path / "bad"),
        write_beir(tmp_path / "b" / "data"),
    )
    _append(bad / "qrels" / "test.tsv", "q0\tt1\thigh\n")
    out = tmp_path / "out"
    done = eval_run("-d", str(good), "-d", str(bad), "-d", str(twin), "--methods", "bm25,dense", "--out", str(out))
    no_traceback(done.stderr)
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipping")]
    assert skipped == [f"skipping {bad}: {bad}/qrels/test.tsv:12: the score 'high' is not a number"]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["datasets"]) == ["data", "data-2"]
    assert f"embedding {TOOL_COUNT} tools" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--methods", ","), "no method named"), (("--latency-sample", "-3"), "greater than or equal to 0")],
)
def test_arguments_that_score_nothing_are_refused_before_the_model_loads(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    data = write_beir(tmp_path / "data")
    started = time.monotonic()
    done = eval_run("-d", str(data), "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    no_traceback(done.stderr)
    assert time.monotonic() - started < 30  # refused up front, not after loading the model and a run


def test_ctrl_c_keeps_the_datasets_that_finished(tmp_path: Path) -> None:
    """Ctrl-C while the second set loads (its corpus a FIFO that never opens): the first set's results are
    written, marked interrupted, with one line saying where; the command ends with 130, no traceback."""
    first = write_beir(tmp_path / "first")
    second = write_beir(tmp_path / "second")
    (second / "corpus.jsonl").unlink()
    os.mkfifo(second / "corpus.jsonl")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [VMCP, "eval", "run", "-d", str(first), "-d", str(second), "--methods", "bm25", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "10000"},
        # A shell without job control starts background commands with SIGINT ignored; a terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_blocked_on_fifo(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    no_traceback(stderr)
    assert proc.returncode == 130, stderr
    assert f"interrupted: results of first written to {out / 'results.partial.json'}" in stderr
    results = json.loads((out / "results.partial.json").read_text())
    assert results["interrupted"] is True
    assert list(results["datasets"]) == ["first"]
    assert not list(out.glob(".*.tmp"))


def _wait_blocked_on_fifo(pid: int, deadline: float = 90) -> None:
    """Until the process sits in the FIFO's open (the first set is scored by then): Linux names that wait
    `wait_for_partner` (fs/pipe.c)."""
    end = time.monotonic() + deadline
    wchan = ""
    while time.monotonic() < end:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        if wchan == "wait_for_partner":
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never blocked on the FIFO (wchan {wchan!r})")


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
