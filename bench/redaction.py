"""Audit redaction (vmcp_opt/telemetry/redact.py) on adversarial free text, two ways.

1. `redacted` over a megabyte of each input: CPU time per MB. A client chooses this text and `re` holds the GIL on
   the audit writer's thread, so a pattern that is not linear shows here as seconds or minutes (ordinary prose:
   ~0.15 s per MB on the 2-core host of session 25). This is the cost per megabyte the audit log redacts: since
   session 26 that is at most `max_data_bytes` + `EDGE_CHARS` of a string, not the whole of it.
2. What the audit log spends on one event whose argument is 4 MB of that input (`redacted_within`, as
   `max_data_bytes: 4096` does): CPU milliseconds, and the longest another thread (the event loop) waited for the
   GIL meanwhile. Before session 26 the whole 4 MB was redacted, then cut: ~0.6 s of CPU, the loop held as long.

Session 30 added the shapes of well-known tokens (`ghp_`, `sk-`, `xoxb-`, `AKIA`, …), presigned URLs' signatures,
name/value pairs and `aws_secret_access_key x`: their worst inputs are here too. Its token pass alone over 4 MB of
any input here: at most ~80 ms on the loaded 2-core host (`_blanked_tokens`).

    PYTHONPATH=. .venv/bin/python bench/redaction.py
"""

from __future__ import annotations

import statistics
import threading
import time

from vmcp_opt.telemetry.redact import redacted, redacted_within

ADVERSARIAL = {
    'a="…': 'a="' * 350_000,
    "quotes '": "'" * 1_000_000,
    'quotes "': '"' * 1_000_000,
    "backslashes": "\\" * 1_000_000,
    'escaped \\"': '\\"' * 500_000,
    "password=…": "password=" * 110_000,
    "password:xxx…": "password:" + "x" * 1_000_000,
    'password="xxx…': 'password="' + "x" * 1_000_000,
    "password: [[[…": "password: [" + "[" * 1_000_000,
    "password: [\"\\'…": 'password: ["' + "\\'" * 500_000,
    "token: {token: {…": "token: {" * 125_000,
    "aaa…=": "a" * 1_000_000 + "=",
    "bearer bearer…": "bearer " * 140_000,
    "Bearer xxx…": "Bearer " + "x" * 1_000_000,
    "basic basic…": "basic " * 170_000,
    "Basic YTpi Basic…": "Basic YTpi " * 90_000,
    "digest a=b, a=b…": "digest " + "a=b, " * 200_000,
    "Authorization: x …": "Authorization: x " * 60_000,
    '{"passpass…': '{"' + "pass" * 250_000 + "}",
    "eyJeyJ…": "eyJ" * 330_000,
    "a:a:a:…": "a:" * 500_000,
    'a:"\\a:"\\…': 'a:"\\' * 250_000,
    # Session 30's shapes: prefixed tokens, query signatures, name/value pairs, `aws_secret_access_key x`.
    "ghp_ghp_…": "ghp_" * 250_000,
    "sk-sk-…": "sk-" * 330_000,
    "xoxb-xoxb-…": "xoxb-" * 200_000,
    "AKIAAKIA…": "AKIA" * 250_000,
    "sk-aaa…": "sk-" + "a" * 1_000_000,
    "github_pat_ x…": "github_pat_ " * 85_000,
    "aws_secret_access_key …": "aws_secret_access_key " * 45_000,
    "?sig=&sig=…": "?sig=" + "&sig=" * 200_000,
    "&X-Amz-Signature…": "&X-Amz-Signature" * 60_000,
    '"name": "token", …': '"name": "token", ' * 60_000,
    '"name": "token", "value": …': '"name": "token", "value": ' * 38_000,
    # Session 31's shapes: a secret-named option's value, a two-item list's in text (each under ~0.3 s per MB).
    "-- -- …": "-- " * 330_000,
    "--token x --token x…": "--token x " * 100_000,
    '["a", ["a", …': '["a", ' * 165_000,
    "['password', x] …": "['password', x] " * 62_000,
    '["aaa…(255)': ('["' + "a" * 255) * 3_900,
    "prose": "The quick brown fox jumps over the lazy dog, then reads its notes. " * 15_000,
}
EVENT_BYTES = 4_000_000
MAX_DATA_BYTES = 4096


def whole_per_mb() -> None:
    per_mb = []
    print(f"{'input':<28} {'MB':>5} {'CPU s':>7} {'s per MB':>9}")
    for name, text in ADVERSARIAL.items():
        started = time.process_time()
        redacted(text)
        spent = time.process_time() - started
        size = len(text.encode()) / 1e6
        per_mb.append(spent / size)
        print(f"{name:<28} {size:>5.2f} {spent:>7.3f} {spent / size:>9.3f}")
    print(f"median {statistics.median(per_mb):.3f} s per MB, worst {max(per_mb):.3f}\n")


def longest_wait(work: threading.Thread) -> float:
    """The longest gap between two wake-ups of this thread (each asks for 1 ms) while `work` runs: the longest
    the event loop would have waited for the GIL, give or take the scheduler's tick."""
    longest, last = 0.0, time.perf_counter()
    work.start()
    while True:
        time.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        if not work.is_alive():
            return longest


def one_event() -> None:
    """Each input's event three times: the least CPU and the least wait of the three (another process on the
    host may take the CPU from either thread at any time)."""
    print(f"one audit event, a {EVENT_BYTES / 1e6:.0f} MB argument, max_data_bytes {MAX_DATA_BYTES}")
    print(f"{'input':<28} {'CPU ms':>7} {'loop wait ms':>13}")
    worst = 0.0
    for name, text in ADVERSARIAL.items():
        value = {"text": (text * (EVENT_BYTES // len(text) + 1))[:EVENT_BYTES]}
        spent: list[float] = []

        def audit(value: dict[str, str] = value, spent: list[float] = spent) -> None:
            started = time.process_time()
            redacted_within(value, MAX_DATA_BYTES)
            spent.append(time.process_time() - started)

        waited = min(longest_wait(threading.Thread(target=audit)) for _ in range(3))
        worst = max(worst, waited)
        print(f"{name:<28} {min(spent) * 1000:>7.2f} {waited * 1000:>13.2f}")
    print(f"worst loop wait {worst * 1000:.2f} ms")


def main() -> None:
    whole_per_mb()
    one_event()


if __name__ == "__main__":
    main()
