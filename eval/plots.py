"""PNG plots from a run's results: Recall@k curves, nDCG@10 bars, latency distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Every file `write_plots` writes: a run that writes none (--no-plots, Ctrl-C) removes these from its out dir.
PLOT_NAMES = ("recall_at_k.png", "ndcg_at_10.png", "latency.png")


def write_plots(results: dict[str, Any], latencies: dict[str, dict[str, list[float]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    datasets = results["datasets"]
    methods = list(dict.fromkeys(m for entry in datasets.values() for m in entry["methods"]))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    written: list[Path] = []

    # Recall@k curves, one panel per dataset.
    ks = sorted(results.get("ks") or [1, 3, 5, 10])
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], datasets.items(), strict=True):
        for method, metrics in entry["methods"].items():
            values = [100 * metrics.get(f"recall@{k}", 0.0) for k in ks]
            ax.plot(ks, values, marker="o", label=method, color=colors[method])
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Recall@k (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    written.append(_save(fig, out / PLOT_NAMES[0]))

    # nDCG@10 bars over datasets x methods.
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(datasets) + 2), 3.8))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(datasets))]
        values = [100 * entry["methods"].get(method, {}).get("ndcg@10", 0.0) for entry in datasets.values()]
        ax.bar(xs, values, width, label=method, color=colors[method])
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels(list(datasets))
    ax.set_ylabel("nDCG@10 (%)")
    ax.legend(fontsize=7, ncol=min(len(methods), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / PLOT_NAMES[1]))

    # Per-query latency distribution, all datasets pooled, one box per method.
    pooled = {m: [v for lat in latencies.values() for v in lat.get(m, [])] for m in methods}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(methods) + 2), 3.6))
    ax.boxplot([pooled[m] or [0.0] for m in methods], showfliers=False)
    ax.set_xticks(range(1, len(methods) + 1))
    ax.set_xticklabels(methods, rotation=20, fontsize=8)
    ax.set_ylabel("latency per query (ms)")
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / PLOT_NAMES[2]))
    return written


def remove_plots(out: Path) -> None:
    """Plots of an earlier run in `out`: beside a new results.json they would pass for its figures."""
    for name in PLOT_NAMES:
        (out / name).unlink(missing_ok=True)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
