"""A stdio backend whose tool `chatty` sends three progress notifications (the second BIG characters long), then
answers "THE-ANSWER" only once the file SIGNAL exists: the test decides when the answer comes.

    answer_on_signal_backend.py SIGNAL BIG
"""

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

SIGNAL, BIG = Path(sys.argv[1]), int(sys.argv[2])
_lock = threading.Lock()


def out(message: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def call(request: dict[str, Any]) -> None:
    token = ((request.get("params") or {}).get("_meta") or {}).get("progressToken")
    for step, text in enumerate(["before", "p" * BIG, "after"]):
        params = {"progressToken": token, "progress": step, "total": 3, "message": text}
        out({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
    while not SIGNAL.exists():
        time.sleep(0.02)
    out({"jsonrpc": "2.0", "id": request["id"], "result": {"content": [{"type": "text", "text": "THE-ANSWER"}]}})


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    method = request.get("method")
    if method == "initialize":
        info = {"name": "signalled", "version": "1"}
        return {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": info}
    if method == "tools/list":
        return {"tools": [{"name": "chatty", "inputSchema": {"type": "object"}}]}
    if method == "ping":
        return {}
    return None


for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request:
        continue
    if request.get("method") == "tools/call":
        threading.Thread(target=call, args=(request,), daemon=True).start()
        continue
    result = answer(request)
    if result is None:
        out({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no such method"}})
    else:
        out({"jsonrpc": "2.0", "id": request["id"], "result": result})
