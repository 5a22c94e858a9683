"""Print the spans an OTLP/HTTP exporter sends: a stand-in collector for seeing the gateway's traces.

    python examples/otlp_receiver.py [--port 4318]
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 VMCP_TELEMETRY__TRACING__ENABLED=true vmcp serve

One line per span: trace id, span id, parent span id, kind, name and the attributes. Loopback only; for
anything beyond a look, use a real collector or Jaeger (`docker run -p 16686:16686 -p 4318:4318
jaegertracing/all-in-one`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
MAX_BODY = 16 * 1024 * 1024


def span_lines(request: ExportTraceServiceRequest) -> list[str]:
    lines = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {a.key: _value(a.value) for a in span.attributes}
                parent = span.parent_span_id.hex() or "-" * 16
                lines.append(
                    f"{span.trace_id.hex()} {span.span_id.hex()} ← {parent} "
                    f"{KINDS.get(span.kind, '?'):8} {span.name}  {attributes}"
                )
    return lines


def _value(value: Any) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
            self.send_error(400, "expected a protobuf ExportTraceServiceRequest at /v1/traces")
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(length))
        for line in span_lines(request):
            print(line, flush=True)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    print(f"OTLP/HTTP traces on http://127.0.0.1:{args.port}/v1/traces", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
