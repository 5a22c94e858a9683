"""A misbehaving MCP backend over stdio, for tests and bench/abuse.py: what a hostile or broken server sends.

Hand-written JSON-RPC (the SDK's server would refuse to send most of this). It lists
- `echo` (well-behaved) and `stats` (how many tools/list requests it has answered);
- `dup` twice, a tool whose `inputSchema` is a string, one whose schema has type "string", and one whose
  name is 100,000 characters long: tools a gateway cannot serve;
- `redos` (`pattern: ^(a+)+$`), `remote_ref` (a `$ref` to HOSTILE_REF_URL) and `file_ref` (a `$ref` to the
  file HOSTILE_REF_FILE): schemas that would make a naive gateway freeze, fetch or read;
- `big` (a text result of `bytes` characters; `id_last` writes the response's `id` last, as TypeScript servers
  do; `notify` sends the text as a log notification first and answers "sent") and `flood` (`count`
  tools/list_changed notifications first), `surrogate` (a text holding a lone surrogate).
HOSTILE_TOOLS=N lists N more plain tools (`tool_0`, ...), a catalogue as large as a careless server's;
HOSTILE_INVALID_TOOLS=N lists N more whose inputSchema is a list, which the protocol's validation refuses.
HOSTILE_DEEP_SCHEMA=N lists `deep`, whose inputSchema nests N object properties (pydantic's serializer stops
at about 127); HOSTILE_GROUPS=N lists `groups`, whose `a` must match a pattern of N nested capture groups.
At start it writes HOSTILE_TOKEN's value to stderr, as a careless server logging its config would, and
HOSTILE_STDERR_LINE=N a line of N characters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

OBJECT = {"type": "object"}
fetches = {"tools/list": 0}
EXTRA = int(os.environ.get("HOSTILE_TOOLS", "0"))
INVALID = int(os.environ.get("HOSTILE_INVALID_TOOLS", "0"))
DEEP = int(os.environ.get("HOSTILE_DEEP_SCHEMA", "0"))
GROUPS = int(os.environ.get("HOSTILE_GROUPS", "0"))
# Stands for the deep schema in `tools()`; spliced in as text, which json.dumps could not nest that deep.
DEEP_MARK = "__deep_schema__"


def tools() -> list[dict[str, Any]]:
    ref_url = os.environ.get("HOSTILE_REF_URL", "http://127.0.0.1:9/schema.json")
    ref_file = Path(os.environ.get("HOSTILE_REF_FILE", "/nonexistent.json")).resolve().as_uri()
    return [
        {"name": "echo", "description": "Echo a message", "inputSchema": _props(message={"type": "string"})},
        {"name": "stats", "description": "How often this server was listed", "inputSchema": OBJECT},
        {"name": "dup", "description": "first dup", "inputSchema": OBJECT},
        {"name": "dup", "description": "second dup", "inputSchema": OBJECT},
        {"name": "string_schema", "description": "schema is a string", "inputSchema": "nope"},
        {"name": "not_object", "description": "schema of a string", "inputSchema": {"type": "string"}},
        {"name": "n" * 100_000, "description": "an absurd name", "inputSchema": OBJECT},
        {
            "name": "redos",
            "description": "nested quantifier",
            "inputSchema": _props(a={"type": "string", "pattern": "^(a+)+$"}),
        },
        {"name": "remote_ref", "description": "remote $ref", "inputSchema": _props(a={"$ref": ref_url})},
        {"name": "file_ref", "description": "file $ref", "inputSchema": _props(a={"$ref": ref_file})},
        {
            "name": "big",
            "description": "a large result",
            "inputSchema": _props(bytes={"type": "integer"}, id_last={"type": "boolean"}, notify={"type": "boolean"}),
        },
        {"name": "flood", "description": "list_changed flood", "inputSchema": _props(count={"type": "integer"})},
        {
            "name": "surrogate",
            "description": "a text with a lone surrogate, which UTF-8 cannot encode",
            "inputSchema": OBJECT,
        },
        {
            "name": "broken",
            "description": "an answer that is not JSON-RPC",
            "inputSchema": _props(kind={"type": "string"}),
        },
        *({"name": f"tool_{n}", "description": f"tool number {n}", "inputSchema": OBJECT} for n in range(EXTRA)),
        *({"name": f"invalid_{n}", "description": "schema is a list", "inputSchema": []} for n in range(INVALID)),
        *([{"name": "deep", "description": "a schema nested deep", "inputSchema": DEEP_MARK}] if DEEP else []),
        *(
            [{"name": "groups", "description": "many groups", "inputSchema": _props(a={"pattern": _groups(GROUPS)})}]
            if GROUPS
            else []
        ),
    ]


def _groups(count: int) -> str:
    return "(" * count + "a" + ")" * count


def _deep_schema(depth: int) -> str:
    level = '{"type": "object", "properties": {"a": '
    return level * depth + '{"type": "string"}' + "}}" * depth


def _props(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def send(message: dict[str, Any]) -> None:
    line = json.dumps(message)
    if DEEP:
        line = line.replace(json.dumps(DEEP_MARK), _deep_schema(DEEP))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if name == "big":
        big = "x" * int(arguments.get("bytes", 1_000_000))
        if not arguments.get("notify"):
            return text(big)
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": big}})
        return text("sent")
    if name == "flood":
        for _ in range(int(arguments.get("count", 100))):
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        return text("flooded")
    if name == "stats":
        return text(json.dumps(fetches))
    if name == "surrogate":
        return text("before \ud800 after")  # JSON's escape of it: valid JSON, not valid UTF-8 once decoded
    return text(json.dumps({"tool": name[:100], "arguments": arguments})[:10_000])


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    method, params = request.get("method"), request.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "hostile", "version": "1.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        fetches["tools/list"] += 1
        return {"tools": tools()}
    if method == "tools/call":
        token = (params.get("_meta") or {}).get("progressToken")
        if token is not None:  # progress first: a gateway in front then answers with an SSE stream
            send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": 1},
                }
            )
        return call(params.get("name", ""), params.get("arguments") or {})
    return None


def write_broken(request_id: object, kind: str) -> None:
    """An answer that is not valid JSON-RPC: a result that is not an object (a short line), or one nested
    deeper than any parser follows (a long line)."""
    depth = 20_000  # past every parser's depth, within limits.max_result_values (a value per `[`)
    result = (
        "[1, 2]" if kind == "not_an_object" else '{"content": [], "_meta": {"deep": ' + "[" * depth + "]" * depth + "}}"
    )
    sys.stdout.write(f'{{"jsonrpc": "2.0", "id": {json.dumps(request_id)}, "result": {result}}}\n')
    sys.stdout.flush()


def main() -> None:
    if os.environ.get("HOSTILE_TOKEN"):
        print(f"hostile starting with token {os.environ['HOSTILE_TOKEN']}", file=sys.stderr, flush=True)
    if os.environ.get("HOSTILE_STDERR_LINE"):
        print("e" * int(os.environ["HOSTILE_STDERR_LINE"]), file=sys.stderr, flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "id" not in request or "method" not in request:
            continue  # notifications and responses
        params = request.get("params") or {}
        if request["method"] == "tools/call" and params.get("name") == "broken":
            write_broken(request["id"], (params.get("arguments") or {}).get("kind", "deep"))
            continue
        result = answer(request)
        if result is None:
            send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "Method not found"}})
        elif ((request.get("params") or {}).get("arguments") or {}).get("id_last"):
            send({"result": result, "jsonrpc": "2.0", "id": request["id"]})
        else:
            send({"jsonrpc": "2.0", "id": request["id"], "result": result})


if __name__ == "__main__":
    main()
