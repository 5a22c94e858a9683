"""Traces and metrics leave the gateway for real receivers: an OTLP/HTTP endpoint started here decodes the
protobuf the gateway exports, and a real Prometheus server (the Debian package) scrapes `/metrics`.

One gateway process with an API key, the optimizer, audit, metrics and traces on; a real MCP client sends
a W3C `traceparent` in its request `_meta`; the backend (examples/backends/trace_echo_server.py) returns the
`_meta` it received. The trace is followed client → gateway SERVER span → CLIENT span → backend, the series
are found through Prometheus's HTTP API with their labels, and no configured secret appears anywhere.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support import EXAMPLES, demo_backend, free_port, running_gateway, stop_process, unavailable, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest], list[bytes]]]:
    """A loopback OTLP/HTTP traces endpoint: its URL, the decoded requests and their raw bodies."""
    received: list[ExportTraceServiceRequest] = []
    raw: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            if ok:
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.append(request)
                raw.append(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received, raw
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def prometheus(directory: Path, target: str) -> Iterator[str]:
    """A real Prometheus on loopback scraping `target` every second; its base URL."""
    assert PROMETHEUS is not None
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: vmcp\n    metrics_path: /metrics\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


def query(base: str, promql: str, want: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Series `promql` returns once there are at least `want` (Prometheus needs a scrape or two)."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            body = httpx2.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5).json()
            result = body["data"]["result"]
            if len(result) >= want:
                return result
        except (httpx2.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{promql}: {result}")


def spans_of(received: list[ExportTraceServiceRequest]) -> list[Any]:
    return [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attributes(span: Any) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def chain_to_backend(echoed: Any, spans: list[Any]) -> list[Any]:
    """The spans from the backend request's up to the one under the client's span, checked to be one trace:
    the backend received the gateway's CLIENT span context (and the client's tracestate) in its `_meta`."""
    structured = echoed.structured_content
    assert structured is not None and not echoed.is_error
    sent = structured["result"]["meta"] if "result" in structured else structured["meta"]
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "01") and sent["tracestate"] == "client=1"
    by_id = {s.span_id.hex(): s for s in spans}
    chain = [by_id[span_id]]
    while chain[-1].parent_span_id.hex() != CLIENT_SPAN:
        chain.append(by_id[chain[-1].parent_span_id.hex()])
    assert {s.trace_id.hex() for s in chain} == {CLIENT_TRACE}
    return chain


@contextmanager
def otlp_grpc_receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest], list[dict[str, str]]]]:
    """A loopback OTLP/gRPC traces endpoint (grpcio serving opentelemetry-proto's TraceService): its URL, the
    requests it received and their metadata."""
    try:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    except ImportError:
        unavailable("grpcio and opentelemetry-exporter-otlp-proto-grpc are not installed (pip install -e '.[dev]')")
    received: list[ExportTraceServiceRequest] = []
    metadata: list[dict[str, str]] = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
            received.append(request)
            metadata.append(dict(context.invocation_metadata()))
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received, metadata
    finally:
        server.stop(grace=None)


async def test_one_trace_runs_from_the_client_through_the_gateway_to_the_backend_and_prometheus_scrapes_it(
    tmp_path: Path,
) -> None:
    if PROMETHEUS is None:
        unavailable("prometheus is not installed (scripts/setup.sh dev installs it when run as root)")
    from vmcp_opt.auth.api_keys import new_key

    key, digest = new_key()
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"sha256": digest, "subject": "bob"}]}))
    config = {
        "backends": [
            demo_backend("notes"),
            {"name": "echo", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "trace_echo_server.py")]},
        ],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "optimizer": {"enabled": True},
        "telemetry": {
            "audit": {"enabled": True, "output": "audit.log"},
            "metrics": {"enabled": True},
            "tracing": {"enabled": True},
        },
    }
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    with otlp_receiver() as (endpoint, received, raw):
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
            client = Client(streamable_http_client(gateway.url, http_client=http))  # type: ignore[arg-type]
            async with client:
                await client.list_tools()
                found = await client.call_tool("find_tool", {"query": "save a note", "limit": 3})
                echoed = await client.call_tool(
                    "call_tool",
                    {"tool_name": "echo_request_meta", "arguments": {}},
                    meta={"traceparent": traceparent, "tracestate": "client=1"},  # type: ignore[typeddict-unknown-key]
                )
                await client.call_tool("call_tool", {"tool_name": "notes_save_note", "arguments": {"title": "t"}})
                unknown = await client.call_tool("call_tool", {"tool_name": "no_such_tool", "arguments": {}})
            await http.aclose()
            refused = [
                httpx2.post(gateway.url, json={}, headers=headers, timeout=30).status_code
                for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic abc"})
            ]
            with prometheus(tmp_path, f"127.0.0.1:{gateway.port}") as prom:
                served = query(prom, 'mcp_server_operation_duration_seconds_count{job="vmcp",method="tools/call"}', 2)
                backend_calls = query(prom, 'mcp_client_operation_duration_seconds_count{backend="echo"}', 1)
                health = query(prom, 'vmcp_backend_health{job="vmcp"}', 8)
                circuit = query(prom, 'vmcp_backend_circuit{state="closed"} == 1', 2)
                results = query(prom, 'vmcp_find_tool_results_count{ranking=~"hybrid|keyword"}', 1)
                savings = query(prom, "vmcp_find_tool_token_savings_percent_count", 1)
                gauges = query(
                    prom, '{__name__=~"vmcp_index_tools|vmcp_active_sessions|vmcp_audit_events_dropped_total"}', 3
                )
                auth = query(prom, 'vmcp_auth_total{job="vmcp",method="api_keys"}', 3)
                not_found = query(prom, "vmcp_unknown_tool_total >= 1", 1)
                rebuilds = query(prom, "vmcp_index_rebuild_seconds_count", 2)
                indexed = query(prom, 'sum by (stage) (vmcp_index_update_tools_total{stage="vectors"}) > 0', 1)
            metrics = httpx2.get(f"{gateway.base}/metrics", timeout=30).text
            output = gateway.output()
        spans = spans_of(received)  # the gateway's shutdown flushed its last batch

    assert found.structured_content
    client_span, target, meta_call = chain_to_backend(echoed, spans)
    assert client_span.kind == 3 and client_span.name == "tools/call request_meta"  # SPAN_KIND_CLIENT
    assert attributes(client_span)["vmcp.backend"] == "echo"
    assert target.name == "tools/call echo_request_meta" and target.kind == 1  # call_tool's target: INTERNAL
    assert attributes(target)["gen_ai.tool.name"] == "echo_request_meta"
    assert meta_call.name == "tools/call call_tool" and meta_call.kind == 2  # SPAN_KIND_SERVER
    server_attributes = attributes(meta_call)
    assert server_attributes["mcp.method.name"] == "tools/call" and server_attributes["vmcp.outcome"] == "success"
    assert server_attributes["mcp.session.id"].startswith(("session:", "credential:"))
    assert server_attributes["jsonrpc.request.id"] and server_attributes["mcp.protocol.version"]
    find = next(s for s in spans if s.name == "tools/call find_tool")
    assert attributes(find)["vmcp.find_tool.result_count"] >= 1
    assert attributes(find)["vmcp.find_tool.ranking"] in {"hybrid", "keyword"}
    failed = next(s for s in spans if s.name == "tools/call notes_save_note")
    assert attributes(failed)["vmcp.outcome"] != "success" and attributes(failed)["error.type"]

    assert {s["metric"]["outcome"] for s in served} >= {"success"}
    assert backend_calls[0]["metric"]["method"] == "tools/call"
    assert {(s["metric"]["backend"], s["metric"]["state"]) for s in health} == {
        (backend, state) for backend in ("notes", "echo") for state in ("unknown", "healthy", "degraded", "unhealthy")
    }
    assert sum(float(s["value"][1]) for s in health) == 2  # one state each
    assert {s["metric"]["backend"] for s in circuit} == {"notes", "echo"}
    assert results and savings and {s["metric"]["__name__"] for s in gauges} >= {"vmcp_index_tools"}
    # authentication outcomes: the session's requests accepted, each refusal by its reason
    assert refused == [401, 401, 401] and unknown.is_error
    counts = {s["metric"]["outcome"]: float(s["value"][1]) for s in auth}
    # `Basic abc` carries no bearer credential: counted (and challenged) as a missing one, RFC 6750 §3.1
    assert counts["accepted"] >= 4 and counts["missing"] == 2 and counts["invalid_token"] == 1
    assert not_found and {s["metric"]["stage"] for s in rebuilds} == {"keywords", "vectors"} and indexed

    everything = b"".join(raw).decode("latin-1") + metrics + output + (tmp_path / "audit.log").read_text()
    assert key not in everything and digest not in everything


async def test_a_diagnostics_listener_serves_metrics_health_and_readiness_apart_from_the_mcp_port(
    tmp_path: Path,
) -> None:
    if PROMETHEUS is None:
        unavailable("prometheus is not installed (scripts/setup.sh dev installs it when run as root)")
    diagnostics = free_port()
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"metrics": {"enabled": True, "listen": f"127.0.0.1:{diagnostics}"}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            listed = await client.list_tools()
            called = await client.call_tool("notes_save_note", {"title": "t", "text": "b"})
        base = f"http://127.0.0.1:{diagnostics}"
        with prometheus(tmp_path, f"127.0.0.1:{diagnostics}") as prom:
            served = query(prom, 'mcp_server_operation_duration_seconds_count{job="vmcp",method="tools/call"}', 1)
            up = query(prom, 'up{job="vmcp"} == 1', 1)
        health = httpx2.get(f"{base}/healthz", timeout=30)
        ready = httpx2.get(f"{base}/readyz", timeout=30)
        main_metrics = httpx2.get(f"{gateway.base}/metrics", timeout=30)
        main_health = httpx2.get(f"{gateway.base}/healthz", timeout=30)

    assert listed.tools and not called.is_error
    assert served[0]["metric"]["outcome"] == "success" and up
    assert health.json() == {"status": "ok"} and ready.status_code == 200 and "backends" in str(ready.json())
    assert main_metrics.status_code == 404 and main_health.status_code == 200  # the MCP port keeps its probes


async def test_traces_leave_over_otlp_grpc_to_a_real_grpc_receiver(tmp_path: Path) -> None:
    echo = {"name": "echo", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "trace_echo_server.py")]}
    config = {"backends": [echo], "telemetry": {"tracing": {"enabled": True}}}
    secret = "otlp-collector-token-5f0c2e9a"
    with otlp_grpc_receiver() as (endpoint, received, metadata):
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {secret}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            async with Client(gateway.url, mode="legacy") as client:
                echoed = await client.call_tool(
                    "echo_request_meta",
                    {},
                    meta={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "client=1"},  # type: ignore[typeddict-unknown-key]
                )
            output = gateway.output()
        spans = spans_of(received)  # the gateway's shutdown flushed its last batch

    client_span, served = chain_to_backend(echoed, spans)
    assert client_span.kind == 3 and attributes(client_span)["vmcp.backend"] == "echo"
    assert served.name == "tools/call echo_request_meta" and served.kind == 2
    assert attributes(served)["vmcp.outcome"] == "success" and attributes(served)["mcp.session.id"].startswith(
        "session:"
    )
    # the collector's credential reached the collector, and nothing else
    assert metadata and all(m["authorization"] == f"Bearer {secret}" for m in metadata)
    assert secret not in output + "".join(str(r) for r in received)


def test_a_diagnostics_port_in_use_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = write_config(
            tmp_path, {"backends": [], "telemetry": {"metrics": {"enabled": True, "listen": str(busy)}}}
        )
        done = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1  # a held port may free: systemd restarts it (exit 2 it does not)
    assert f"cannot start: telemetry.metrics.listen 127.0.0.1:{busy}: Address already in use" in " ".join(
        (done.stdout + done.stderr).split()
    )


async def test_a_stdio_gateway_serves_its_metrics_on_the_diagnostics_listener(tmp_path: Path) -> None:
    diagnostics = free_port()
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "telemetry": {"metrics": {"enabled": True, "listen": f"127.0.0.1:{diagnostics}"}},
        },
    )
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)]
    )
    async with Client(params) as client:
        called = await client.call_tool("notes_save_note", {"title": "t", "text": "b"})
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{diagnostics}", timeout=30) as http:
            metrics = (await http.get("/metrics")).text
            ready = await http.get("/readyz")
    assert not called.is_error and ready.status_code == 200
    assert 'mcp_server_operation_duration_seconds_count{method="tools/call",outcome="success"} 1.0' in metrics


async def test_metrics_on_the_main_listener_need_a_credential_from_afar_when_authentication_is_on(
    tmp_path: Path,
) -> None:
    """/metrics follows /readyz: loopback or a verified credential, else 401. Unknown prompts are counted apart
    from unknown tools."""
    from mcp.shared.exceptions import MCPError

    from tests.test_host_binding import a_non_loopback_address
    from vmcp_opt.auth.api_keys import new_key

    address = a_non_loopback_address()
    key, digest = new_key()
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"sha256": digest, "subject": "alice"}]}))
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(tmp_path, config), "--host", "0.0.0.0") as gateway:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
            with pytest.raises(MCPError):
                await client.get_prompt("no_such_prompt")
        await http.aclose()
        remote = f"http://{address}:{gateway.port}/metrics"
        anonymous = httpx2.get(remote, timeout=30)
        wrong = httpx2.get(remote, headers={"Authorization": "Bearer vmcp_not-a-known-key-12345678"}, timeout=30)
        keyed = httpx2.get(remote, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        local = httpx2.get(f"{gateway.base}/metrics", timeout=30)

    assert anonymous.status_code == wrong.status_code == 401 and "vmcp_backend_health" not in anonymous.text
    assert keyed.status_code == local.status_code == 200 and "vmcp_backend_health" in keyed.text
    assert "vmcp_unknown_prompt_total 1.0" in local.text and "vmcp_unknown_tool_total 0.0" in local.text


def test_a_bare_integer_listen_port_is_accepted_and_the_mcp_port_is_refused_for_diagnostics(tmp_path: Path) -> None:
    def validate(metrics: dict[str, Any], port: int = 8080) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path, {"server": {"port": port}, "telemetry": {"metrics": metrics}})
        command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    readme_form = validate({"enabled": True, "listen": 9464})  # YAML reads 9464 as an integer
    assert readme_form.returncode == 0, readme_form.stderr
    clash = validate({"enabled": True, "listen": 9464}, port=9464)
    assert clash.returncode == 2
    assert "telemetry.metrics.listen: port 9464 is server.port, the MCP listener's" in clash.stderr
