"""Catalogue rebuilds: merged on a worker thread, and a burst of backend changes coalesced. The gateway's own
core in process, over real demo backend processes."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import pytest

from tests.support import demo_backend
from vmcp_opt.aggregation import BackendSource, Catalog, live
from vmcp_opt.config import AggregationConfig, VmcpConfig
from vmcp_opt.gateway import Gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_burst_of_backend_changes_costs_at_most_two_merges_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    merges: list[str] = []  # the thread each merge ran on
    merge = live.build_catalog

    def recorded(sources: Sequence[BackendSource], config: AggregationConfig) -> Catalog:
        merges.append(threading.current_thread().name)
        return merge(sources, config)

    monkeypatch.setattr(live, "build_catalog", recorded)
    config = VmcpConfig.model_validate(
        {"backends": [demo_backend("notes"), demo_backend("more")], "optimizer": {"enabled": False}}
    )
    gateway = Gateway(config)
    async with anyio.create_task_group() as task_group:
        try:
            with anyio.fail_after(60):
                await gateway.start(task_group)
                await gateway.wait_for_backends()
            first = dict(gateway.catalog.current.tools)
            assert len(merges) == 1 and first
            connections = list(gateway.backends.connections.values())
            async with anyio.create_task_group() as burst:
                for _ in range(5):
                    for connection in connections:
                        burst.start_soon(gateway._on_backend_change, connection)
            # Ten announcements: one merge that began after them all, or at most one more for those that
            # arrived while it ran; each reads every listing afresh.
            assert 2 <= len(merges) <= 3
            assert threading.main_thread().name not in merges
            assert gateway.catalog.current.tools.keys() == first.keys()
        finally:
            gateway.stop()
            task_group.cancel_scope.cancel()


async def test_a_start_up_that_fails_unexpectedly_stops_the_gateway_instead_of_serving_half(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the background start-up (say, indexing a catalogue) is fatal: the runner's `on_fatal` stops the
    server with exit status 1, rather than leaving /healthz answering while every request fails."""

    async def broken() -> None:
        raise KeyError("a bug")

    config = VmcpConfig.model_validate({"backends": [demo_backend("notes")], "optimizer": {"enabled": False}})
    gateway = Gateway(config)
    monkeypatch.setattr(gateway, "_tools_changed", broken)
    stopped: list[BaseException] = []
    fatal = anyio.Event()

    def on_fatal(exc: BaseException) -> None:
        stopped.append(exc)
        fatal.set()

    gateway.on_fatal = on_fatal
    async with anyio.create_task_group() as task_group:
        try:
            with anyio.fail_after(60):
                await gateway.start(task_group)
                await fatal.wait()
        finally:
            gateway.stop()
            task_group.cancel_scope.cancel()
    assert gateway.fatal is stopped[0]
    assert "start-up failed: KeyError" in str(gateway.fatal)
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
