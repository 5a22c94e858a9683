"""The single-flight helper (vmcp_opt/single_flight.py) that the JWKS cache and the backend token cache share: one
fetch per key for every caller meanwhile, waiters bounded by their own wait, a flight cut off fetched anew.

A pure concurrency primitive, tested on its own: the callers are anyio tasks, and the tests step them with
`wait_all_tasks_blocked` (every other task parked on the flight) rather than with sleeps."""

from __future__ import annotations

import math

import anyio
import pytest

from vmcp_opt.single_flight import SingleFlight

pytestmark = pytest.mark.anyio
# Seconds after which a caller that should not wait at all is failed: a broken helper fails, never hangs the run.
HANG_GUARD = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Overdue(Exception):
    pass


def nothing_ready() -> str | None:
    return None


class Fetches:
    """A fetch that parks until the test lets it answer; the n-th call answers `answer-n`."""

    def __init__(self) -> None:
        self.calls = 0
        self.go = anyio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        call = self.calls
        await self.go.wait()
        return f"answer-{call}"


async def test_callers_arriving_during_a_flight_share_its_outcome_and_nothing_is_kept() -> None:
    flights: SingleFlight[str, str] = SingleFlight(math.inf, Overdue)
    fetch = Fetches()
    got: list[str] = []

    async def caller() -> None:
        got.append(await flights.get("k", fetch, ready=nothing_ready))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert flights.running("k") and not flights.running("other")
        fetch.go.set()
    assert got == ["answer-1"] * 5 and fetch.calls == 1
    assert len(flights) == 0


async def test_a_flight_cut_off_by_its_callers_cancellation_is_fetched_anew_by_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight(math.inf, Overdue)
    fetch = Fetches()
    got: list[str] = []

    async def waiter() -> None:
        got.append(await flights.get("k", fetch, ready=nothing_ready))

    first = anyio.CancelScope()

    async def fetch_and_be_cancelled() -> None:
        with first:
            await flights.get("k", fetch, ready=nothing_ready)

    async with anyio.create_task_group() as group:
        group.start_soon(fetch_and_be_cancelled)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter)
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert fetch.calls == 1 and got == []
        first.cancel()  # the first caller goes: its flight ends with no outcome
        await anyio.wait_all_tasks_blocked()
        assert fetch.calls == 2  # one waiter fetches anew, the other waits for that flight
        fetch.go.set()
    assert got == ["answer-2", "answer-2"]
    assert len(flights) == 0


async def test_a_fetch_that_raises_is_its_callers_alone_and_a_waiter_fetches_anew() -> None:
    flights: SingleFlight[str, str] = SingleFlight(math.inf, Overdue)
    go = anyio.Event()
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await go.wait()
        if calls == 1:
            raise LookupError("a bug, not an outcome")
        return "fetched"

    async def fetcher() -> None:
        with pytest.raises(LookupError):
            await flights.get("k", fetch, ready=nothing_ready)

    got: list[str] = []

    async def waiter() -> None:
        got.append(await flights.get("k", fetch, ready=nothing_ready))

    async with anyio.create_task_group() as group:
        group.start_soon(fetcher)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        go.set()
    assert got == ["fetched"] and calls == 2


async def test_a_waiter_gets_overdue_at_its_wait_while_the_flight_goes_on() -> None:
    flights: SingleFlight[str, str] = SingleFlight(0, Overdue)  # a waiter's wait ends at its arrival
    fetch = Fetches()
    got: list[str] = []

    async def first() -> None:
        got.append(await flights.get("k", fetch, ready=nothing_ready))

    async with anyio.create_task_group() as group:
        group.start_soon(first)  # the first caller's own flight is bounded by `fetch`, not by the wait
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Overdue), anyio.fail_after(HANG_GUARD):
            await flights.get("k", fetch, ready=nothing_ready)
        assert flights.running("k") and fetch.calls == 1
        fetch.go.set()
    assert got == ["answer-1"]


async def test_ready_needs_no_flight_and_meanwhile_answers_without_waiting() -> None:
    flights: SingleFlight[str, str] = SingleFlight(math.inf, Overdue)
    fetch = Fetches()
    assert await flights.get("k", fetch, ready=lambda: "at hand") == "at hand"
    assert fetch.calls == 0 and not flights.running("k")

    async def fetcher() -> None:
        await flights.get("k", fetch, ready=nothing_ready)

    async with anyio.create_task_group() as group:
        group.start_soon(fetcher)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(HANG_GUARD):
            got = await flights.get("k", fetch, ready=nothing_ready, meanwhile=lambda: "still good")
        assert got == "still good" and flights.running("k")
        fetch.go.set()
    assert fetch.calls == 1
