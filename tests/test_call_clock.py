"""The call clock: time a backend spends waiting for its client is not the call's (deadline, latency)."""

from __future__ import annotations

import anyio
import pytest

from vmcp_opt.health import CallClock


def test_time_waiting_for_the_client_does_not_count_against_the_deadline() -> None:
    async def main() -> tuple[float, float]:
        clock = CallClock()
        with clock.deadline(0.3):
            await anyio.sleep(0.1)
            with clock.paused():
                await anyio.sleep(0.5)  # past the deadline, were it not paused
            await anyio.sleep(0.1)
        return clock.backend_time(), clock.client_time

    backend, client = anyio.run(main)
    assert 0.2 <= backend < 0.3
    assert client >= 0.5


def test_backend_time_past_the_budget_times_out_after_a_pause() -> None:
    async def main() -> None:
        clock = CallClock()
        with clock.deadline(0.2):
            with clock.paused():
                await anyio.sleep(0.3)
            await anyio.sleep(1.0)

    started = anyio.run(_now)
    with pytest.raises(TimeoutError):
        anyio.run(main)
    assert anyio.run(_now) - started < 0.9  # 0.3 s paused + 0.2 s of budget, not the whole second


def test_overlapping_waits_count_once() -> None:
    async def main() -> float:
        clock = CallClock()
        with clock.paused():
            await anyio.sleep(0.1)
            with clock.paused():
                await anyio.sleep(0.1)
        return clock.client_time

    assert 0.2 <= anyio.run(main) < 0.35


async def _now() -> float:
    return anyio.current_time()
