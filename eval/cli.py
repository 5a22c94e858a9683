"""`vmcp eval run`: the retrieval benchmark (mounted by `vmcp_opt.cli` as `vmcp eval`).

Also runnable alone: `python -m eval.cli run --dataset all`.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from eval.datasets import BUNDLED, expand_names
from eval.harness import RunOptions
from eval.methods import BASE_METHODS, KNOWN_METHODS

if TYPE_CHECKING:
    from eval.embed import SharedEmbedder
    from vmcp_opt.config import OptimizerConfig

eval_app = typer.Typer(help="Retrieval benchmarks: the optimizer against its rivals on public tool-retrieval data.")

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# `--encoder`: load_embedder's settings for each way of embedding (optimizer/encoder.py for the lean one).
# `onnx*`: ONNX Runtime over the model's export at a precision (optimizer/onnx_export.py), no torch.
ENCODERS: dict[str, dict[str, Any]] = {
    "lean": {"encoder": "torch", "lean": True, "query_bfloat16": True},
    "lean-fp32": {"encoder": "torch", "lean": True, "query_bfloat16": False},
    "general": {"encoder": "torch", "lean": False, "query_bfloat16": False},
    "onnx": {"encoder": "onnx", "precision": "fp32"},
    "onnx-int8": {"encoder": "onnx", "precision": "int8"},
    "onnx-int8-blockwise": {"encoder": "onnx", "precision": "int8-blockwise"},
    "onnx-int8-dynamic": {"encoder": "onnx", "precision": "int8-dynamic"},
}


@eval_app.callback()
def _main() -> None:
    """Retrieval benchmarks."""


@eval_app.command()
def run(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            metavar="<dataset>",
            help=f"A bundled set ({', '.join(BUNDLED)}), 'all', or a BEIR directory. Repeatable.",
        ),
    ],
    methods: Annotated[str, typer.Option(help=f"Comma-separated; known: {', '.join(KNOWN_METHODS)}.")] = ",".join(
        BASE_METHODS
    ),
    k: Annotated[str, typer.Option("--k", help="Cut-offs for Recall@k, nDCG@k and COMP@k.")] = "1,3,5,10",
    out: Annotated[Path, typer.Option(help="Where results.json, latencies.json and the plots go.")] = DEFAULT_OUT,
    limit_queries: Annotated[
        int | None, typer.Option(min=1, help="Score at most N queries per dataset (a reproducible sample).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the bundled sets live (default ../shared/eval-data, or $VMCP_EVAL_DATA)."),
    ] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split to score (ToolLens 'train' is the dev split).")] = "test",
    plots: Annotated[bool, typer.Option(help="Write PNG plots next to results.json.")] = True,
    latency_sample: Annotated[
        int, typer.Option(min=0, help="Queries per dataset and method timed with their own embedding; 0 = all.")
    ] = 300,
    threads: Annotated[
        int,
        typer.Option(min=1, help="torch threads; on a busy 2-core machine 1 was 4-8x faster than 2."),
    ] = 1,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="How texts are embedded: 'lean' (torch: optimizer/encoder.py, bfloat16 queries where the "
            "CPU has it), 'lean-fp32' (float32 queries), 'general' (sentence-transformers' encode), 'onnx' "
            "(ONNX Runtime, fp32), 'onnx-int8' (served: SmoothQuant then dynamic int8), 'onnx-int8-blockwise' "
            "(block-wise int8 weights) or 'onnx-int8-dynamic' (int8 dynamic quantisation of every op). "
            "Default: what the gateway's default configuration serves (optimizer.encoder and .precision)."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="<model>",
            help="An embedding model: a registry id (models/registry.yaml) or a local sentence-transformers "
            "directory. Repeatable: every method runs with each, side by side. Default: the configured model.",
        ),
    ] = None,
) -> None:
    """Run every method on every dataset with each embedding model and print the tables."""
    from eval.datasets import default_data_dir
    from eval.harness import methods_list
    from vmcp_opt.config import OptimizerConfig

    console = Console(stderr=True)
    try:
        method_names = methods_list(methods, KNOWN_METHODS)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--methods") from None
    ks = _cutoffs(k)
    config = OptimizerConfig()  # the gateway's defaults: its model, and how it runs it
    encoder = encoder or served_encoder(config)
    if encoder not in ENCODERS:
        raise typer.BadParameter(f"must be one of {', '.join(ENCODERS)}, got {encoder!r}", param_hint="--encoder")
    models = list(dict.fromkeys(model or [config.model]))
    _check_models(models)
    names = expand_names(dataset)
    data_root = data_dir or default_data_dir()
    bundled_wanted = [name for name in names if name in BUNDLED]
    if bundled_wanted and not data_root.exists():
        console.print(
            f"[yellow]bundled datasets not found: {data_root} does not exist. Point --data-dir (or "
            f"$VMCP_EVAL_DATA) at the eval-data directory; skipping {', '.join(bundled_wanted)}.[/yellow]"
        )
        names = [name for name in names if name not in BUNDLED]
        if not names:
            raise typer.Exit(code=2)
    # Everything the run needs, checked before the model loads and the datasets are scored.
    _check_datasets(names)
    _check_writable(out)
    lock = _lock_out(out, console)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    options = RunOptions(
        datasets=names,
        methods=method_names,
        ks=ks,
        out=out,
        data_dir=data_root,
        limit_queries=limit_queries,
        split=split,
        plots=plots,
        latency_sample=latency_sample or None,
    )
    try:
        _run_models(models, config, encoder, threads, options, console)
    finally:
        os.close(lock)


def _run_models(
    models: list[str], config: OptimizerConfig, encoder: str, threads: int, options: RunOptions, console: Console
) -> None:
    """Every method on every dataset with each model in turn, then the models side by side."""
    from eval.embed import embedding_record, load_shared_embedder
    from eval.harness import DatasetFailed
    from vmcp_opt.optimizer.model_registry import ModelError

    out = options.out
    runs = []
    for spec in models:
        try:
            embedder = load_shared_embedder(
                # Document vectors are cached per encoder and model: a comparison never reads another's vectors.
                spec,
                config.bulk_bfloat16,
                out / "cache" / encoder,
                query_threads=max(1, threads),
                encoder_name=encoder,
                **ENCODERS[encoder],
            )
        except ModelError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from None
        embedder.show_progress = True
        model_options = replace(options, embedding=embedding_record(embedder, ENCODERS[encoder]))
        try:
            runs.append(_run_model(embedder, model_options, several=len(models) > 1, console=console))
        except KeyboardInterrupt:  # the harness has saved what finished and said where
            raise typer.Exit(code=130) from None
        except DatasetFailed as exc:  # likewise; one line for what broke, not a traceback
            console.print(f"failed on {exc}", style="red", markup=False, highlight=False)
            raise typer.Exit(code=1) from None
    if len(runs) > 1:
        from eval.models import models_table

        (out / "models.json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
        typer.echo(models_table(runs))
        console.print(f"models side by side: {out / 'models.json'}")


def served_encoder(config: OptimizerConfig) -> str:
    """The `--encoder` that embeds as a gateway with `config` does: its default is what is measured unless a
    comparison asks for another (the gateway's torch encoder is the lean one with bfloat16 queries)."""
    if config.encoder == "torch":
        return "lean"
    return "onnx" if config.precision == "fp32" else f"onnx-{config.precision}"


def _cutoffs(k: str) -> list[int]:
    """`--k 1,3,5,10` → [1, 3, 5, 10]."""
    try:
        ks = sorted({int(part) for part in k.split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"needs comma-separated positive integers, e.g. 1,3,5,10; got {k!r}", param_hint="--k")
    return ks


def _check_datasets(names: list[str]) -> None:
    """Each name is a bundled set or a directory (what is in it is checked as each loads)."""
    unknown = [name for name in names if name not in BUNDLED and not Path(name).expanduser().is_dir()]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))}: neither a bundled dataset ({', '.join(BUNDLED)}, or 'all') "
            "nor a BEIR directory",
            param_hint="--dataset",
        )


def _check_writable(out: Path) -> None:
    """`out` exists (made if need be) and takes a file: a run of many minutes must not end unable to save."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vmcp-eval-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise typer.BadParameter(f"cannot write results to {out}: {exc.strerror or exc}", param_hint="--out") from None


def _check_models(models: list[str]) -> None:
    """Every `--model` resolves (a few small files read, nothing loaded) before the first one runs: a bad
    second model fails now, not after the first model's whole run."""
    from vmcp_opt.optimizer.model_registry import model_problem

    for spec in models:
        problem = model_problem(spec)
        if problem is not None:
            raise typer.BadParameter(problem, param_hint="--model")


LOCK_NAME = ".vmcp-eval.lock"


def _lock_out(out: Path, console: Console) -> int:
    """An exclusive lock on `out` for the run's life (the returned descriptor; the OS drops it when the process
    ends, however it ends). Two runs into one `--out` would each replace results.json, latencies.json and the
    plots with their own, leaving files of different runs side by side: the second is refused at once."""
    import fcntl

    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise typer.BadParameter(f"cannot lock {path}: {exc.strerror or exc}", param_hint="--out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        console.print(
            f"{out} is in use by another vmcp eval run (pid {holder}); wait for it or give this run another --out",
            style="red",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=2) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _run_model(embedder: SharedEmbedder, options: RunOptions, *, several: bool, console: Console) -> dict[str, Any]:
    """One model's whole run: its profile, every method on every dataset, its table. With several models each
    writes under `<out>/<model>/`; the vector cache stays shared under `<out>/cache/`."""
    from eval.harness import markdown_table
    from eval.harness import run as run_eval
    from eval.models import model_slug

    out = options.out / model_slug(embedder.model_id) if several else options.out
    profile = _profile(embedder, options, console)
    results = run_eval(replace(options, out=out, model_profile=profile), embedder, console)
    if not results["datasets"]:
        console.print("[red]no dataset could be loaded[/red]")
        raise typer.Exit(code=2)
    typer.echo(f"\nmodel {embedder.model_id}\n" if several else "", nl=False)
    typer.echo(markdown_table(results))
    console.print(f"results: {out / 'results.json'} ({results['total_seconds']} s)")
    return results


# Texts timed per model: single queries as find_tool embeds them, and one bulk job of documents.
PROFILE_QUERIES = 100
PROFILE_DOCUMENTS = 128


def _profile(embedder: SharedEmbedder, options: RunOptions, console: Console) -> dict[str, Any] | None:
    """The model's ModelProfile, timed on texts of the run's first dataset that loads."""
    from eval.datasets import DatasetError, load_dataset
    from eval.methods import plain_text
    from eval.models import profile_model

    for name in options.datasets:
        try:
            dataset = load_dataset(name, options.data_dir, split=options.split)
        except DatasetError:
            continue
        console.print(f"timing {embedder.model_id} on {dataset.name}")
        queries = [text for _, text in dataset.judged_queries()[:PROFILE_QUERIES]]
        documents = [plain_text(tool) for tool in dataset.tools[:PROFILE_DOCUMENTS]]
        profile = profile_model(embedder, dataset.name, queries, documents).as_dict()
        console.print(f"{embedder.model_id}: {profile}")
        return profile
    return None


if __name__ == "__main__":
    eval_app()
