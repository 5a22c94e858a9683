"""A hostile MCP backend writing raw JSON-RPC, for tests/test_value_budget29.py: over stdio (`stdio JUNK TOOLS`) or
streamable HTTP (`http PORT json|sse JUNK TOOLS`).

Its tools/list page holds `TOOLS` tools beside `ok`, `commas`, `jsontext` and `endless`, and, when `JUNK` is not 0,
a field of `JUNK` zeros (a page of few items and millions of values). Its tools answer:
- `commas` (`n`): `n` strings holding a comma each, as structured content, beside 2,000 rows of JSON as text;
- `jsontext` (`n`): `n` rows of JSON as one text, full of escaped quotes and backslashes (`jsontext_rows`);
- `endless` (`n`, HTTP): a body of `n` zeros that never ends (the connection stays open, silent).
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from typing import Any


def jsontext_rows(n: int) -> str:
    """`n` rows of JSON as text: escaping it puts a backslash before each quote and doubles each backslash."""
    rows = [
        {"id": i, "path": f"C:\\dir\\{i}", "quote": f'say "{i}", then [{{go}}]', "tags": ["a,b", "\\"]}
        for i in range(n)
    ]
    return json.dumps(rows)


def tool(name: str) -> dict[str, Any]:
    props = {"n": {"type": "integer"}}
    return {"name": name, "description": f"tool {name}", "inputSchema": {"type": "object", "properties": props}}


def listing(junk: int, tools: int) -> dict[str, Any]:
    page: dict[str, Any] = {"tools": [tool(name) for name in ("ok", "commas", "jsontext", "endless")]}
    page["tools"] += [tool(f"t{i}") for i in range(tools)]
    if junk:
        page["junk"] = [0] * junk
    return page


def call_result(name: str, n: int) -> dict[str, Any]:
    if name == "commas":
        return {"content": [{"type": "text", "text": jsontext_rows(2000)}], "structuredContent": {"a": ["x,y"] * n}}
    if name == "jsontext":
        return {"content": [{"type": "text", "text": jsontext_rows(n)}]}
    return {"content": [{"type": "text", "text": "fine"}]}


def answer(message: dict[str, Any], junk: int, tools: int) -> dict[str, Any]:
    mid, method, params = message.get("id"), message.get("method"), message.get("params") or {}
    if method == "initialize":
        result = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "budget", "version": "1"},
        }
    elif method == "tools/list":
        result = listing(junk, tools)
    elif method == "tools/call":
        result = call_result(params["name"], int((params.get("arguments") or {}).get("n", 0)))
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no"}}
    return {"jsonrpc": "2.0", "id": mid, "result": result}


def serve_stdio(junk: int, tools: int) -> None:
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        message = json.loads(raw)
        if message.get("id") is not None:
            out.write((json.dumps(answer(message, junk, tools)) + "\n").encode())
            out.flush()


def serve_http(port: int, sse: bool, junk: int, tools: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._empty(405)

        def do_DELETE(self) -> None:
            self._empty(200)

        def do_POST(self) -> None:
            message = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if message.get("id") is None:
                self._empty(202)
            elif message.get("method") == "tools/call" and message["params"]["name"] == "endless":
                self._endless(message["id"], int(message["params"]["arguments"]["n"]))
            else:
                body = json.dumps(answer(message, junk, tools)).encode()
                if sse:
                    body = b"event: message\ndata: " + body + b"\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream" if sse else "application/json")
                self.send_header("Mcp-Session-Id", "s1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _endless(self, mid: Any, n: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Mcp-Session-Id", "s1")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            start = json.dumps({"jsonrpc": "2.0", "id": mid, "result": {"content": []}})[:-2]
            body = (start + ', "structuredContent": {"a": [' + "0, " * n).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.flush()
            threading.Event().wait()  # never the rest: a reader waiting for the end waits for ever

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        serve_stdio(int(sys.argv[2]), int(sys.argv[3]))
    else:
        serve_http(int(sys.argv[2]), sys.argv[3] == "sse", int(sys.argv[4]), int(sys.argv[5]))
