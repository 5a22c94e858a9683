"""`QueryRuns` (optimizer/onnx_encoder.py) after a burst: the trimmer thread is not woken by every run while the
burst's peak stands (it was: twice a run, ~6 of the 13 context switches of a find_tool at 10k tools), and it still
hands the heap back once the runs stop.

Counted from the kernel's account of the trimmer thread (`voluntary_ctxt_switches` of its task), not timed: a thread
woken per run shows one switch or more a run whatever the machine's load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vmcp_opt.optimizer import onnx_encoder
from vmcp_opt.optimizer.onnx_encoder import QueryRuns

RUNS = 100

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the kernel's per-thread counts")


def switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])


def overlap(runs: QueryRuns) -> None:
    """Two runs at once: a burst, which starts the trimmer."""
    first_in, second_done = threading.Event(), threading.Event()

    def first() -> None:
        with runs.slot():
            first_in.set()
            second_done.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    assert first_in.wait(10)
    with runs.slot():
        pass
    second_done.set()
    holder.join(10)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_runs_after_a_burst_do_not_wake_the_trimmer_each_time() -> None:
    runs = QueryRuns(2, quiet=3600.0)  # no quiet within the test: the burst's peak stands throughout
    overlap(runs)
    trimmer = runs._trimmer
    assert trimmer is not None
    before = switches(trimmer)
    for _ in range(RUNS):
        with runs.slot():
            time.sleep(0.001)  # a run leaves the GIL, as ONNX Runtime's `run` does: a woken thread gets to run
    # Before the change each run's start and end woke it: twice RUNS switches, at least RUNS even when a wake-up
    # found the next run already begun. Now it sleeps through them all (a few for its own start: the GIL, the lock).
    assert switches(trimmer) - before <= 10


def test_the_heap_is_still_handed_back_after_the_runs_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[float] = []
    monkeypatch.setattr(onnx_encoder, "release_memory", lambda: trims.append(time.monotonic()))
    runs = QueryRuns(2, quiet=0.05)
    overlap(runs)
    for _ in range(5):
        with runs.slot():
            pass
    wait_until(lambda: len(trims) == 1)
    for _ in range(5):  # runs one at a time after it leave nothing to hand back; a new burst is handed back in turn
        with runs.slot():
            pass
    overlap(runs)
    wait_until(lambda: len(trims) == 2)
