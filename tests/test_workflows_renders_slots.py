"""`RenderSlots` (workflows/renders.py) on real worker threads: how many renders one run, one caller and
the gateway hold at once, and that a cancelled render gives its slots back only once its thread has ended.
Each render here is a function that blocks its thread until the test lets it go, so what is held is counted
while it is held, not guessed from durations."""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import pytest

from vmcp_opt.workflows.renders import RenderSlots, RunRenders

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Gate:
    """Renders that block until released; counts those inside now and the most there ever were."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.ended = 0

    def work(self, stop: threading.Event) -> str:
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            while not (self.release.is_set() or stop.is_set()):
                self.release.wait(0.01)
            return "done"
        finally:
            with self._lock:
                self.inside -= 1
                self.ended += 1


async def until(predicate: Callable[[], bool]) -> None:
    """Polls the threads' counts (they change in worker threads, which cannot set an anyio.Event)."""
    with anyio.fail_after(30):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def test_one_run_holds_at_most_its_share_and_another_run_still_renders() -> None:
    slots, gate = RenderSlots(total=8, per_caller=4, per_run=2), Gate()
    busy, other = slots.run("alice"), slots.run("bob")
    async with anyio.create_task_group() as group:
        for _ in range(10):  # a for_each of ten items, all rendering
            group.start_soon(busy.render, gate.work)
        await until(lambda: gate.inside == 2)
        assert await other.render(lambda stop: "cheap") == "cheap"  # a slot was free for another run
        assert gate.inside == 2 and slots.held("alice") == 2
        gate.release.set()
    assert gate.most == 2 and gate.ended == 10


async def test_one_caller_s_runs_together_hold_at_most_its_share() -> None:
    slots, gate = RenderSlots(total=8, per_caller=4, per_run=2), Gate()
    runs = [slots.run("alice") for _ in range(5)]
    async with anyio.create_task_group() as group:
        for run in runs:
            for _ in range(3):
                group.start_soon(run.render, gate.work)
        await until(lambda: gate.inside == 4)
        assert await slots.run("bob").render(lambda stop: "cheap") == "cheap"
        assert slots.held("alice") == 4
        gate.release.set()
    assert gate.most == 4 and gate.ended == 15
    assert slots.held("alice") == 0 and slots.callers() == 0  # nothing kept for callers that are done


async def test_a_nested_run_shares_the_slots_of_the_run_it_runs_in() -> None:
    slots = RenderSlots(total=8, per_caller=4, per_run=2)
    outer = slots.run(None)
    assert slots.run(None, enclosing=outer) is outer
    assert slots.run(None) is not outer  # a run started elsewhere has its own
    assert RenderSlots().run(None, enclosing=outer) is not outer  # other slots: not shared


async def test_a_cancelled_render_keeps_its_slots_until_its_thread_has_ended() -> None:
    slots, gate = RenderSlots(total=1, per_caller=1, per_run=1), Gate()
    run: RunRenders = slots.run("alice")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(run.render, gate.work)
            await until(lambda: gate.inside == 1)
            scope.cancel()
    # The render was told to stop and waited for: no thread computes outside the bounds.
    assert gate.ended == 1 and gate.inside == 0
    assert await slots.run("bob").render(lambda stop: "next") == "next"


class Gates:
    """Renders that each block until their own release; records which caller's render started, in order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._lock = threading.Lock()
        self.releases: dict[str, list[threading.Event]] = {}

    def work(self, caller: str) -> Callable[[threading.Event], str]:
        release = threading.Event()

        def render(stop: threading.Event) -> str:
            with self._lock:
                self.started.append(caller)
                self.releases.setdefault(caller, []).append(release)
            while not (release.is_set() or stop.is_set()):
                release.wait(0.01)
            return caller

        return render

    def release_one(self, caller: str) -> None:
        with self._lock:
            self.releases[caller].pop(0).set()


async def test_a_freed_slot_goes_to_the_waiting_caller_that_holds_fewest() -> None:
    # alice and carol each hold one of the two slots and have one more render waiting; bob asks last. A
    # first-come queue would give the freed slots to alice's and carol's waiting renders, bob's third.
    slots, gates = RenderSlots(total=2, per_caller=2, per_run=1), Gates()
    async with anyio.create_task_group() as group:
        for asked, caller in enumerate(("alice", "carol", "alice", "carol", "bob"), start=1):
            group.start_soon(slots.run(caller).render, gates.work(caller))
            await until(lambda asked=asked: len(gates.started) + slots.waiting() == asked)
        assert gates.started == ["alice", "carol"]
        gates.release_one("alice")  # alice holds none now, like bob, but bob was never served: bob
        await until(lambda: len(gates.started) == 3)
        gates.release_one("carol")  # then alice and carol hold none: alice was served longer ago
        await until(lambda: len(gates.started) == 4)
        gates.release_one("bob")
        await until(lambda: len(gates.started) == 5)
        assert gates.started == ["alice", "carol", "bob", "alice", "carol"]
        gates.release_one("alice")
        gates.release_one("carol")
    assert slots.waiting() == 0 and slots.callers() == 0


async def test_one_caller_never_holds_more_than_its_share_even_with_slots_free() -> None:
    slots, gate = RenderSlots(total=4, per_caller=1, per_run=1), Gate()
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(slots.run("alice").render, gate.work)
        await until(lambda: gate.inside == 1)
        assert await slots.run("bob").render(lambda stop: "cheap") == "cheap"
        assert slots.held("alice") == 1 and gate.inside == 1
        gate.release.set()
    assert gate.most == 1 and gate.ended == 3


def test_the_bounds_must_nest() -> None:
    with pytest.raises(ValueError, match="per_run"):
        RenderSlots(total=2, per_caller=2, per_run=3)
