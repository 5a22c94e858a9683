"""The one plot the benches share: latency histograms of two or more paths, cut at the slowest p99."""

from __future__ import annotations

from pathlib import Path

from eval.metrics import percentile


def latency_histogram(series: dict[str, list[float]], path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    top = max(percentile(samples, 99) for samples in series.values())
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, samples in series.items():
        ax.hist([s for s in samples if s <= top], bins=60, alpha=0.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
