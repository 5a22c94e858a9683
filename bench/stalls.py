"""The slowest `/healthz` answer while something runs: the event-loop stall another client would see.

Asked from a separate process. A poller in the bench's own process counts the bench's stalls too: the SDK
client parsing a 50,000-tool list holds the bench's GIL (and its event loop) for seconds, which an
in-process poller reported as the gateway's (bench/README.md, "Abuse").

    with stall_watch("http://127.0.0.1:8000/healthz") as stop:
        ...                      # the attack, the start-up, the listing
    slowest_ms, asked_at = stop()

`asked_at` is on `time.monotonic()`'s clock, which on Linux is one system-wide clock (CLOCK_MONOTONIC), so
the caller can subtract its own start time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def stall_watch(health_url: str, interval: float = 0.01) -> Iterator[Callable[[], tuple[float, float]]]:
    """A poller process asking `health_url` every `interval` s until the returned `stop` is called; `stop`
    gives the slowest answer (ms) and when it was asked (`time.monotonic()`)."""
    poller = subprocess.Popen(
        [sys.executable, "-m", "bench.stalls", health_url, str(interval)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert poller.stdin is not None and poller.stdout is not None
    poller.stdout.readline()  # "polling": it is asking from now on

    def stop() -> tuple[float, float]:
        assert poller.stdin is not None and poller.stdout is not None
        poller.stdin.close()
        report = json.loads(poller.stdout.read())
        poller.wait()
        return float(report["slowest_ms"]), float(report["asked"])

    try:
        yield stop
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.wait()


def poll(health_url: str, interval: float) -> None:
    """Until stdin closes; then the slowest answer as JSON on stdout. Refused connections (the gateway not
    listening yet, or gone) are skipped."""
    done = threading.Event()

    def wait_for_stdin_to_close() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    slowest, asked_at = 0.0, 0.0
    print("polling", flush=True)
    with httpx2.Client(timeout=300) as http:
        while True:  # at least one answer, however short what it watches
            asked = time.monotonic()
            try:
                http.get(health_url)
            except httpx2.HTTPError:
                pass
            else:
                took = time.monotonic() - asked
                if took > slowest:
                    slowest, asked_at = took, asked
            if done.wait(interval):
                break
    print(json.dumps({"slowest_ms": slowest * 1000, "asked": asked_at}), flush=True)


if __name__ == "__main__":
    poll(sys.argv[1], float(sys.argv[2]))
