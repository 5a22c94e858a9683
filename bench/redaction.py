"""Audit redaction (vmcp_opt/telemetry/redact.py) on a megabyte of adversarial free text: each input's CPU time,
per MB. A client chooses this text and `re` holds the GIL on the audit writer's thread, so a pattern that is not
linear shows here as seconds or minutes (ordinary prose: ~0.15 s per MB on the 2-core host of session 25).

    PYTHONPATH=. .venv/bin/python bench/redaction.py
"""

from __future__ import annotations

import statistics
import time

from vmcp_opt.telemetry.redact import redacted

ADVERSARIAL = {
    'a="…': 'a="' * 350_000,
    "quotes '": "'" * 1_000_000,
    'quotes "': '"' * 1_000_000,
    "backslashes": "\\" * 1_000_000,
    'escaped \\"': '\\"' * 500_000,
    "password=…": "password=" * 110_000,
    "password:xxx…": "password:" + "x" * 1_000_000,
    'password="xxx…': 'password="' + "x" * 1_000_000,
    "aaa…=": "a" * 1_000_000 + "=",
    "bearer bearer…": "bearer " * 140_000,
    "Bearer xxx…": "Bearer " + "x" * 1_000_000,
    '{"passpass…': '{"' + "pass" * 250_000 + "}",
    "eyJeyJ…": "eyJ" * 330_000,
    "a:a:a:…": "a:" * 500_000,
    "prose": "The quick brown fox jumps over the lazy dog, then reads its notes. " * 15_000,
}


def main() -> None:
    per_mb = []
    print(f"{'input':<20} {'MB':>5} {'CPU s':>7} {'s per MB':>9}")
    for name, text in ADVERSARIAL.items():
        started = time.process_time()
        redacted(text)
        spent = time.process_time() - started
        size = len(text.encode()) / 1e6
        per_mb.append(spent / size)
        print(f"{name:<20} {size:>5.2f} {spent:>7.3f} {spent / size:>9.3f}")
    print(f"median {statistics.median(per_mb):.3f} s per MB, worst {max(per_mb):.3f}")


if __name__ == "__main__":
    main()
