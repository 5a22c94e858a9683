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
