"""Start-up time of interactive `vmcp` commands: median wall time of a fresh process per run.

    .venv/bin/python bench/cli_start.py --runs 9
    git worktree add --detach /tmp/base HEAD
    .venv/bin/python bench/cli_start.py --runs 9 --baseline /tmp/base   # the same table beside a baseline checkout

Each command is what a person types (`vmcp --version`, `--help`, `validate`, `config-docs --check`, `index list`)
and what the test suite starts hundreds of times: its cost is mostly imports (`python -X importtime -m vmcp_opt
<command>` says which). A run is `python -m vmcp_opt <command>` with the checkout first on `sys.path`, so a
baseline checkout (a `git worktree` of an older commit) runs in the same interpreter and virtualenv. Runs of
the two checkouts alternate, so a load that changes during the bench touches both columns alike; the data
directory is a fresh temporary one, shared by both. Prints a table; `--json FILE` writes the medians too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS: list[list[str]] = [
    ["--version"],
    ["--help"],
    ["validate", "-c", "examples/demo.yaml"],
    ["config-docs", "--check", "-o", "docs/configuration.md"],
    ["index", "list"],
]


def run_once(checkout: Path, command: list[str], env: dict[str, str]) -> float:
    """Seconds one `vmcp <command>` process takes, from its start to its exit (its exit code is not ours to
    judge: `index list` of an empty data directory may say so and exit non-zero)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *command],
        cwd=checkout,
        env={**env, "PYTHONPATH": str(checkout)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=120,
    )
    return time.perf_counter() - started


def bench(checkouts: dict[str, Path], runs: int) -> dict[str, dict[str, float]]:
    """Median seconds per command per checkout; one warm-up run each first (bytecode caches, page cache)."""
    with tempfile.TemporaryDirectory(prefix="cli-start-") as data:
        env = {**os.environ, "XDG_DATA_HOME": data, "COLUMNS": "120"}
        medians: dict[str, dict[str, float]] = {}
        for command in COMMANDS:
            times: dict[str, list[float]] = {label: [] for label in checkouts}
            for checkout in checkouts.values():
                run_once(checkout, command, env)
            for _ in range(runs):
                for label, checkout in checkouts.items():  # alternating: a load change touches both alike
                    times[label].append(run_once(checkout, command, env))
            medians[" ".join(command)] = {label: statistics.median(values) for label, values in times.items()}
    return medians


def print_table(medians: dict[str, dict[str, float]], labels: list[str]) -> None:
    header = f"{'command':<52}" + "".join(f"{label + ' (s)':>16}" for label in labels)
    print(header + ("   ratio" if len(labels) == 2 else ""))
    for command, row in medians.items():
        line = f"vmcp {command:<47}" + "".join(f"{row[label]:>16.3f}" for label in labels)
        if len(labels) == 2:
            line += f"   {row[labels[1]] / row[labels[0]]:.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="Runs per command and checkout (median reported).")
    parser.add_argument("--baseline", type=Path, help="A checkout of the code to compare with (a git worktree).")
    parser.add_argument("--json", type=Path, help="Also write the medians (seconds) and the load average here.")
    args = parser.parse_args()
    checkouts = {"baseline": args.baseline.resolve()} if args.baseline else {}
    checkouts["now"] = ROOT
    medians = bench(checkouts, args.runs)
    labels = list(checkouts)
    print_table(medians, labels)
    if args.json:
        record = {"runs": args.runs, "load": os.getloadavg(), "medians_s": medians}
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
