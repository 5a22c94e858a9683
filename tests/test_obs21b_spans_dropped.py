"""Spans the trace exporter's queue cannot take are counted, over a real gateway (`vmcp serve`) whose OTLP
collector accepts connections and never answers: the exporter's first batch hangs, the queue
(`OTEL_BSP_MAX_QUEUE_SIZE`, 4 here) fills, and every further span is dropped. The SDK said so only in a warning
per span; `/metrics` now counts them (`vmcp_trace_spans_dropped_total`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from tests.test_obs21b_outcomes import sample

pytestmark = pytest.mark.anyio
QUEUE = 4
REQUESTS = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """An address that takes connections (the kernel's backlog) and never reads or answers them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"


async def test_spans_past_the_exporters_queue_are_counted_as_dropped(tmp_path: Path, silent_collector: str) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"tracing": {"enabled": True}, "metrics": {"enabled": True}},
    }
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": silent_collector,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "120",  # the first batch waits for longer than the test runs
        "OTEL_BSP_MAX_QUEUE_SIZE": str(QUEUE),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
    }
    with running_gateway(write_config(tmp_path, config), env=env) as gateway:
        assert sample(gateway, "vmcp_trace_spans_dropped_total") == 0
        async with Client(gateway.url) as client:
            for _ in range(REQUESTS):  # one span each (and the session's start)
                await client.list_tools()
        dropped = sample(gateway, "vmcp_trace_spans_dropped_total")
        # At most the queue and the one batch the exporter took wait; every other span was dropped and counted.
        assert REQUESTS + 1 - QUEUE - 2 <= dropped <= REQUESTS + 1
        assert "OTEL_BSP_MAX_QUEUE_SIZE" in gateway.output()  # said once, not per span
        assert httpx2.get(f"{gateway.base}/healthz", timeout=30).status_code == 200
