"""The diagnostics listener and the trace exporter's settings and log, over real processes (`vmcp serve`, the demo
backend, plain sockets and HTTP):

- `telemetry.metrics.listen` has the MCP port's connection limits: a client that never finishes its headers is
  closed at `limits.http_header_timeout`, and one address holds at most `limits.max_connections_per_address`.
- Setting it leaves uvicorn's own log lines in the configured format (JSON), on the MCP port too.
- `OTEL_BSP_*` values the SDK refuses (a batch larger than the queue, zero) start the gateway with a warning
  naming the variable, not a traceback and exit 1.
- A secret in the collector URL's query string never reaches the log through the exporter's warnings.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx2
import pytest

from tests.support import demo_backend, free_port, raw_session, running_gateway, write_config
from tests.test_obs_telemetry_limits import poll

pytestmark = [pytest.mark.slow]


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the gateway closed (or refused) the connection: end of stream, an answer, or a reset."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1024) is not None  # b"" at close; an answer means the connection was refused
    except TimeoutError:
        return False
    except OSError:
        return True


def test_half_sent_headers_on_the_metrics_listener_are_closed_at_the_header_timeout(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = {
        "backends": [],
        "telemetry": {"metrics": {"enabled": True, "listen": metrics_port}},
        "limits": {"http_header_timeout": 1},
    }
    with running_gateway(write_config(tmp_path, config)), socket.create_connection(("127.0.0.1", metrics_port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        poll(lambda: _closed_by_server(sock), "the half-sent request's connection closed", timeout=20)


def test_one_address_holds_at_most_its_share_of_the_metrics_listener(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = {
        "backends": [],
        "telemetry": {"metrics": {"enabled": True, "listen": metrics_port}},
        "limits": {"max_connections_per_address": 2},
    }
    with running_gateway(write_config(tmp_path, config)):
        held = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(2)]
        try:
            with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as third:
                third.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # past its share only a probe is served
                answer = third.recv(1024)
        finally:
            for sock in held:
                sock.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer


def test_uvicorn_lines_stay_json_with_a_metrics_listener(tmp_path: Path) -> None:
    config = {"backends": [], "telemetry": {"metrics": {"enabled": True, "listen": free_port()}}}
    with running_gateway(write_config(tmp_path, config), "--log-format", "json") as gateway:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
            sock.recv(1024)
        poll(lambda: "Invalid HTTP request" in gateway.output(), "the bad request logged")
        lines = [line for line in gateway.output().splitlines() if "Invalid HTTP request" in line]
    record = json.loads(lines[0])  # not uvicorn's own "WARNING:  Invalid HTTP request received."
    assert record["logger"].startswith("uvicorn") and record["level"] == "warning", record


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),  # below the default batch of 512
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),  # above the default queue of 2048
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
    ],
)
def test_a_batch_setting_the_sdk_refuses_starts_the_gateway_with_a_warning(
    tmp_path: Path, variable: str, value: str
) -> None:
    config = {"backends": [], "telemetry": {"tracing": {"enabled": True}}}
    env = {variable: value, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    with running_gateway(write_config(tmp_path, config), env=env) as gateway:
        assert httpx2.get(f"{gateway.base}/healthz", timeout=10).status_code == 200
        output = gateway.output()
    warnings = [line for line in output.splitlines() if "WARNING" in line and variable in line]
    assert len(warnings) == 1, output
    assert "Traceback" not in output, output


def test_a_secret_in_the_collector_url_never_reaches_the_log(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"tracing": {"enabled": True}}}
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces?api_key=SECRETQ&region=eu",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }
    with running_gateway(write_config(tmp_path, config), env=env) as gateway:
        session = raw_session(gateway.url)
        listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        assert httpx2.post(gateway.url, json=listed, headers=session, timeout=30).status_code == 200
        poll(lambda: "api_key=" in gateway.output(), "the exporter's warning about the closed collector")
        output = gateway.output()
    assert "SECRETQ" not in output, output
    assert "api_key=***&region=eu" in output, output
