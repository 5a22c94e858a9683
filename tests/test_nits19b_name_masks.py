"""find_tool's per-policy name masks under concurrent searches: `ToolIndex.search` runs on worker threads (one
per find_tool), and each caller's policy gives a name set whose mask is kept for the served snapshot, at most
`NAME_MASKS_KEPT` of them. Past that, each new set evicts the oldest; two threads evicting at once made one of
them fail ("dictionary changed size during iteration"), and that caller's find_tool with it.

A real `ToolIndex` (keywords only: the race is in the index's own bookkeeping, before any model). The first
test replays the interleaving that failed, step by step (profiling hooks pause each thread at the exact call);
the second searches from many threads with ten times more distinct name sets than are kept, the interpreter
switching threads as often as it can, so that evictions overlap whatever the code's steps are."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.index import NAME_MASKS_KEPT, ToolIndex

THREADS = 16
SEARCHES = 3000  # per thread, each with a name set of its own: far more than are kept
PAUSE = 5.0  # seconds a paused thread waits at most for the other (bounded: a fixed index never pauses)


def index_of(tmp_path: Path, tools: int) -> ToolIndex:
    index = ToolIndex(OptimizerConfig(), tmp_path)
    index.update_keywords(
        [ToolRecord(name=f"tool_{i}", backend="b", description=f"Fetch report number {i}") for i in range(tools)]
    )
    return index


def test_a_search_evicting_a_mask_while_another_evicts_one_succeeds(tmp_path: Path) -> None:
    index = index_of(tmp_path, 4)
    for n in range(NAME_MASKS_KEPT):  # the kept masks full: the next new set evicts one
        assert index.search("fetch report", names=frozenset({f"elsewhere_{n}"})).hits == []
    mask_code = ToolIndex._name_mask.__code__
    other_evicted, first_done = threading.Event(), threading.Event()
    other: list[Any] = []
    started: list[threading.Thread] = []

    def other_paused_after_its_eviction(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_return" and frame.f_code is mask_code and getattr(arg, "__name__", "") == "pop":
            sys.setprofile(None)
            other_evicted.set()
            first_done.wait(PAUSE)

    def other_search() -> None:
        sys.setprofile(other_paused_after_its_eviction)
        other.append(index.search("fetch report", names=frozenset({"tool_1", "b"})).hits)

    def first_paused_inside_its_eviction(frame: FrameType, event: str, arg: Any) -> None:
        # The oldest key's iterator is made, its first key not read yet: the other search evicts meanwhile.
        if event == "c_call" and frame.f_code is mask_code and arg is next:
            sys.setprofile(None)
            started.append(threading.Thread(target=other_search))
            started[0].start()
            other_evicted.wait(PAUSE)

    sys.setprofile(first_paused_inside_its_eviction)
    try:
        hits = index.search("fetch report", names=frozenset({"tool_0", "a"})).hits
    finally:
        sys.setprofile(None)
        first_done.set()
    assert [hit.record.name for hit in hits] == ["tool_0"]
    for thread in started:  # none once the index evicts with no such step (it has nothing to interleave)
        thread.join(PAUSE * 2)
        assert [hit.record.name for hit in other[0]] == ["tool_1"]


@pytest.fixture
def switching_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_concurrent_searches_with_many_policies_never_fail(tmp_path: Path, switching_often: None) -> None:
    index = index_of(tmp_path, 4)
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []
    searched: list[int] = []

    def search_as_many_callers(thread: int) -> None:
        start.wait()
        try:
            for n in range(SEARCHES):
                # Most name no tool here (a policy for another backend's tools), so that the search ends at its
                # mask and the threads spend their time where they race; every tenth names a tool it must find.
                named = f"tool_{(thread + n) % 4}" if n % 10 == 0 else f"elsewhere_{thread}_{n}"
                hits = index.search("fetch report", limit=3, names=frozenset({named, f"other_{thread}_{n}"})).hits
                assert [hit.record.name for hit in hits] == ([named] if n % 10 == 0 else [])
                searched.append(n)
        except BaseException as exc:  # reported below, with how many failed
            failures.append(exc)

    threads = [threading.Thread(target=search_as_many_callers, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, f"{len(failures)} threads' searches failed, the first: {failures[0]!r}"
    assert len(searched) == THREADS * SEARCHES
