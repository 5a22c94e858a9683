"""Run methods over datasets, score them, and write `results.json`, a markdown table and plots."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eval.datasets import Dataset, DatasetError, load_dataset
from eval.embed import SharedEmbedder, embedding_caption
from eval.methods import QUERY_FREE_METHODS, Context, make_method
from eval.metrics import evaluate, paired_bootstrap, per_query_ndcg, percentile

HEADLINE = ("ndcg@10", "recall@5", "comp@5", "mrr@10", "latency_ms_p50")
# Queries per dataset and method whose find_tool answers are measured in tokens (outside the timing).
ANSWER_SAMPLE = 100


@dataclass
class RunOptions:
    datasets: list[str]
    methods: list[str]
    ks: list[int]
    out: Path
    data_dir: Path | None = None
    limit_queries: int | None = None
    split: str = "test"
    optimizer_overrides: dict[str, Any] = field(default_factory=dict)
    plots: bool = True
    # Queries per dataset and method timed end to end with their own query embedding (None = all). The
    # rest reuse query vectors embedded once per request by the first method asking (quality does not
    # depend on this: those vectors are the ones a timed query computes), which shortens a full run.
    latency_sample: int | None = 300
    # What the run's model costs (eval/models.py: ModelProfile.as_dict()), written into results.json.
    model_profile: dict[str, Any] | None = None
    # How the vectors were made (eval/embed.py: embedding_record), written into results.json and the table's title.
    embedding: dict[str, Any] | None = None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def run(options: RunOptions, embedder: SharedEmbedder, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "model": embedder.model_id,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ks": options.ks,
        "split": options.split,
        "datasets": {},
        "skipped": {},
    }
    if options.model_profile is not None:
        results["model_profile"] = options.model_profile
    if options.embedding is not None:
        results["embedding"] = options.embedding
    latencies: dict[str, dict[str, list[float]]] = {}
    depth = max([*options.ks, 10])
    current = ""  # the dataset being run, as the results and the messages name it
    try:
        for name in options.datasets:
            current = name
            try:
                dataset = load_dataset(name, options.data_dir, split=options.split).limited(options.limit_queries)
            except DatasetError as exc:
                console.print(f"skipping {name}: {exc}", style="yellow", markup=False, highlight=False)
                results["skipped"][name] = str(exc)
                continue
            for note in dataset.notes:
                console.print(f"{name}: {note}", style="yellow", markup=False, highlight=False)
            # Two BEIR directories of one name (a/data, b/data) must not overwrite each other's rows.
            dataset.name = current = _unique_key(dataset.name, results["datasets"])
            entry, lat = run_dataset(dataset, options, embedder, depth, console)
            results["datasets"][dataset.name] = entry
            latencies[dataset.name] = lat
    except KeyboardInterrupt:
        results["interrupted"] = True
        _save_unfinished(results, latencies, options.out, started, console, "interrupted")
        raise
    except Exception as exc:
        # Whatever broke one dataset, the ones before it took minutes each: keep them, then stop.
        error = f"{type(exc).__name__}: {exc}"
        results["failed"] = {"dataset": current, "error": error}
        _save_unfinished(results, latencies, options.out, started, console, f"failed on {current}")
        raise DatasetFailed(f"{current}: {error}") from exc
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if not results["datasets"]:
        # Nothing scored: keep the last run's results.json rather than replace it with an empty one.
        return results
    write_results(results, latencies, options.out)
    if options.plots:
        from eval.plots import write_plots

        written = write_plots(results, latencies, options.out)
        # Say where: with several models they go to `<out>/<model>/`, not where --out points.
        names = ", ".join(path.name for path in written)
        console.print(f"plots: {names} in {options.out}", markup=False, highlight=False)
    return results


# Where an unfinished run (Ctrl-C, a failure) puts what it finished: a complete run's results.json and its
# plots are worth more than part of a run, so they are left as they were.
PARTIAL_RESULTS = "results.partial.json"
PARTIAL_LATENCIES = "latencies.partial.json"


def write_results(results: dict[str, Any], latencies: dict[str, Any], out: Path) -> None:
    """A complete run's results.json and latencies.json, each replaced whole: an interrupted write leaves the
    old file. The last run's plots go (this run's, if it makes any, are written next), and so does an
    unfinished run's results.partial.json, which this complete run supersedes."""
    from eval.plots import remove_plots

    out.mkdir(parents=True, exist_ok=True)
    remove_plots(out)
    _write_json(out / "results.json", json.dumps(results, indent=2) + "\n")
    _write_json(out / "latencies.json", json.dumps(latencies) + "\n")
    for name in (PARTIAL_RESULTS, PARTIAL_LATENCIES):
        (out / name).unlink(missing_ok=True)


def write_partial_results(results: dict[str, Any], latencies: dict[str, Any], out: Path) -> Path:
    """The finished datasets of an unfinished run, beside (never over) the last complete run's files."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PARTIAL_RESULTS, json.dumps(results, indent=2) + "\n")
    _write_json(out / PARTIAL_LATENCIES, json.dumps(latencies) + "\n")
    return out / PARTIAL_RESULTS


def _write_json(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class DatasetFailed(Exception):
    """A dataset's run broke (not a dataset that cannot be read, which is skipped): the datasets finished
    before it are written, marked unfinished; the message names the dataset and the error."""


def _save_unfinished(
    results: dict[str, Any], latencies: dict[str, Any], out: Path, started: float, console: Console, why: str
) -> None:
    """Ctrl-C or a failure: keep the datasets that finished (minutes of work each), marked as the caller
    marked `results` (`interrupted`, `failed`), in results.partial.json."""
    finished = list(results["datasets"])
    if not finished:
        console.print(f"{why} before any dataset finished: nothing written", markup=False, highlight=False)
        return
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    try:
        path = write_partial_results(results, latencies, out)
    except OSError as exc:
        console.print(f"{why}; cannot write {out / PARTIAL_RESULTS}: {exc}", markup=False, highlight=False)
        return
    console.print(
        f"{why}: results of {', '.join(finished)} written to {path} (results.json and plots left as they were)",
        markup=False,
        highlight=False,
    )


def _unique_key(name: str, taken: dict[str, Any]) -> str:
    key, suffix = name, 2
    while key in taken:
        key, suffix = f"{name}-{suffix}", suffix + 1
    return key


def run_dataset(
    dataset: Dataset, options: RunOptions, embedder: SharedEmbedder, depth: int, console: Console
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    queries = dataset.judged_queries()
    ctx = Context(dataset, embedder, options.out, dict(options.optimizer_overrides))
    entry: dict[str, Any] = {
        "queries": len(queries),
        "tools": len(dataset.tools),
        "split": dataset.split,
        # Past tasks the optimizer's co-usage graph learned from (qrels/train.tsv; 0 = none).
        "usage_tasks": len(dataset.past_tasks()),
        "methods": {},
    }
    latencies: dict[str, list[float]] = {}
    per_query: dict[str, dict[str, float]] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    cutoffs = sorted(set(options.ks) | {5, 10})
    timed = len(queries) if options.latency_sample is None else min(options.latency_sample, len(queries))
    # The untimed queries' vectors are embedded once and reused by every method: each request as find_tool
    # embeds it (SharedEmbedder.encode_queries_with_tokens), so the figures are the same whatever the
    # latency sample. A new cache per dataset: it holds one set's queries, not every set's.
    embedder.query_cache = {} if timed < len(queries) else None
    if timed < len(queries) and not QUERY_FREE_METHODS.issuperset(options.methods):
        embedder.prime_queries([text for _, text in queries[timed:]])
    for method_name in options.methods:
        method = make_method(method_name)
        # Built before the query bar opens: embedding a catalogue can take minutes and shows its own bar
        # (SharedEmbedder.show_progress), and rich draws one live display at a time.
        build_started = time.perf_counter()
        method.build(ctx)
        build_seconds = time.perf_counter() - build_started
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"{dataset.name:<20} {method_name:<22}", total=len(queries))
            rankings: dict[str, list[str]] = {}
            at: dict[int, dict[str, list[str]]] = {}
            times: list[float] = []
            answer_tokens: list[int] = []
            for position, (qid, text) in enumerate(queries):
                embedder.bypass_cache = position < timed
                query_started = time.perf_counter()
                rankings[qid] = method.search(text, depth)
                if position < timed:
                    times.append((time.perf_counter() - query_started) * 1000.0)
                if position < ANSWER_SAMPLE:
                    answer_tokens += method.answer_tokens()
                per_cutoff = method.search_cutoffs(text, cutoffs)
                if per_cutoff is not None:
                    for k, ranked in per_cutoff.items():
                        at.setdefault(k, {})[qid] = ranked
                bar.advance(task)
        embedder.bypass_cache = False
        scores = evaluate(rankings, dataset.qrels, options.ks, at or None)
        per_query[method_name] = per_query_ndcg(rankings, dataset.qrels, 10, at or None)
        metrics: dict[str, Any] = {key: round(value, 4) for key, value in sorted(scores.items())}
        metrics["latency_ms_p50"] = round(percentile(times, 50), 3)
        metrics["latency_ms_p95"] = round(percentile(times, 95), 3)
        metrics["build_seconds"] = round(build_seconds, 3)
        metrics["latency_queries"] = len(times)
        if answer_tokens:
            metrics["answer_tokens_per_result_mean"] = round(sum(answer_tokens) / len(answer_tokens), 1)
            metrics["answer_tokens_per_result_p95"] = round(percentile([float(n) for n in answer_tokens], 95), 1)
        entry["methods"][method_name] = metrics
        latencies[method_name] = [round(value, 3) for value in times]
    entry["gains"] = gains_over_best_baseline(entry["methods"], per_query)
    return entry, latencies


def gains_over_best_baseline(
    methods: dict[str, dict[str, Any]], per_query: dict[str, dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """nDCG@10 of each optimizer method minus the better of bm25 and dense, with a paired bootstrap 95 %
    interval over queries (a gain whose interval holds 0 is not one this set can show)."""
    baselines = [name for name in ("bm25", "dense") if name in methods]
    if not baselines:
        return {}
    best = max(baselines, key=lambda name: methods[name]["ndcg@10"])
    gains: dict[str, dict[str, Any]] = {}
    for name in methods:
        if not name.startswith("optimizer"):
            continue
        qids = sorted(per_query[name].keys() & per_query[best].keys())
        mean, low, high = paired_bootstrap([per_query[name][q] for q in qids], [per_query[best][q] for q in qids])
        gains[name] = {"baseline": best, "ndcg@10": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}
    return gains


def markdown_table(results: dict[str, Any]) -> str:
    """One row per dataset and method; metrics in points (x100), latency in ms; titled with how the vectors were
    made, so a table pasted elsewhere can be traced to its encoder."""
    title = [embedding_caption(results["embedding"]), ""] if "embedding" in results else []
    lines = [
        *title,
        "| dataset | method | nDCG@10 | Recall@5 | COMP@5 | MRR@10 | p50 ms | p95 ms | build s | tokens/result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["datasets"].items():
        for method, m in entry["methods"].items():
            lines.append(
                f"| {name} | {method} | {100 * m['ndcg@10']:.1f} | {100 * m['recall@5']:.1f} | "
                f"{100 * m['comp@5']:.1f} | {100 * m['mrr@10']:.1f} | {m['latency_ms_p50']:.2f} | "
                f"{m['latency_ms_p95']:.2f} | {m['build_seconds']:.2f} | {_answer_size(m)} |"
            )
    summaries = [gains_summary(results, method) for method in ("optimizer", "optimizer-cold")]
    summaries.append(comp_summary(results))
    lines += ["", *(summary for summary in summaries if summary)] if any(summaries) else []
    return "\n".join(lines)


def _answer_size(metrics: dict[str, Any]) -> str:
    """find_tool's tokens per result, mean and p95 ("—" for a method that is not find_tool)."""
    if "answer_tokens_per_result_mean" not in metrics:
        return "—"
    return f"{metrics['answer_tokens_per_result_mean']:.0f} (p95 {metrics['answer_tokens_per_result_p95']:.0f})"


def comp_summary(results: dict[str, Any], method: str = "optimizer", dataset: str = "toollens") -> str:
    """COMP@5 of `method` as a multiple of dense's on `dataset` (the issue's completeness goal)."""
    methods = results["datasets"].get(dataset, {}).get("methods", {})
    if method not in methods or "dense" not in methods or methods["dense"]["comp@5"] <= 0:
        return ""
    ratio = methods[method]["comp@5"] / methods["dense"]["comp@5"]
    return (
        f"{dataset} COMP@5: {method} {100 * methods[method]['comp@5']:.1f} vs dense "
        f"{100 * methods['dense']['comp@5']:.1f} ({ratio:.1f}x)"
    )


def gains_summary(results: dict[str, Any], method: str = "optimizer") -> str:
    """nDCG@10 gain of `method` over the better of bm25 and dense, per dataset (with its 95 % interval
    when the run has one) and on average."""
    gains: list[tuple[str, float]] = []
    intervals: dict[str, str] = {}
    used: set[str] = set()  # the baselines the run had, named in the label
    for name, entry in results["datasets"].items():
        methods = entry["methods"]
        present = [b for b in ("bm25", "dense") if b in methods]
        baselines = [methods[b]["ndcg@10"] for b in present]
        used.update(present if method in methods else ())
        if method in methods and baselines:
            gains.append((name, 100 * (methods[method]["ndcg@10"] - max(baselines))))
            interval = entry.get("gains", {}).get(method, {}).get("ci95")
            if interval:
                intervals[name] = f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
    if not gains:
        return ""
    parts = ", ".join(f"{name} {gain:+.1f}{intervals.get(name, '')}" for name, gain in gains)
    mean = sum(gain for _, gain in gains) / len(gains)
    named = [b for b in ("bm25", "dense") if b in used]
    label = f"max({', '.join(named)})" if len(named) > 1 else named[0]
    label += " [paired bootstrap 95 % interval]" if intervals else ""
    return f"{method} nDCG@10 over {label}: {parts}; mean {mean:+.1f}"


def methods_list(text: str, known: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no method named; known: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(known)}")
    return names
