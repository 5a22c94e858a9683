"""What a trace collector that stays down makes the gateway log, over real processes: the gateway (`vmcp serve`)
with traces on, the demo backend, plain HTTP requests, and an OTLP/HTTP endpoint that answers every export
503 with `Retry-After: 0` (an overloaded collector; one that is down costs the same, a second apart).

The OTLP exporter warns at every retry of every batch: six attempts a batch, five "Transient error" lines and a
"Failed to export" line, for as long as the collector is unwell. The gateway's log lets one of each through per
minute, and the next one says how many were held back.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import demo_backend, raw_session, running_gateway, write_config
from tests.test_obs_telemetry_limits import poll

pytestmark = [pytest.mark.slow]


@contextmanager
def unwell_collector() -> Iterator[tuple[str, list[float]]]:
    """An OTLP/HTTP endpoint that refuses every export with 503 and `Retry-After: 0`: its URL, and the times of
    the attempts it received."""
    attempts: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            attempts.append(time.monotonic())
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", attempts
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_trace_collector_costs_one_log_line_a_minute_not_one_per_retry(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"tracing": {"enabled": True}}}
    with unwell_collector() as (endpoint, attempts):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            session = raw_session(gateway.url)
            for batch in range(3):  # one batch of spans at a time, each tried six times
                listed = {"jsonrpc": "2.0", "id": batch + 2, "method": "tools/list"}
                assert httpx2.post(gateway.url, json=listed, headers=session, timeout=30).status_code == 200
                poll(lambda n=batch: len(attempts) >= 6 * (n + 1), f"batch {batch + 1} tried six times")
            output = gateway.output()
    assert output.count("Transient error") == 1, output
    assert output.count("Failed to export") == 1, output
