"""A stdio backend whose tool `ask` holds each call until two are running at once, then asks the client
(`elicitation/create`, the call's `message` as the question) and answers with the username it was given: a
question asked while two calls are in flight on one backend session, whatever the timing.

    paired_asks_backend29.py
"""

import contextlib
import json
import sys
import threading
from typing import Any

PAIR = 2
_write = threading.Lock()
_arrived = threading.Barrier(PAIR)
_answers: dict[str, dict[str, Any]] = {}
_answered = threading.Condition()


def out(message: dict[str, Any]) -> None:
    with _write:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def call(request: dict[str, Any]) -> None:
    message = str(((request.get("params") or {}).get("arguments") or {}).get("message", ""))
    with contextlib.suppress(threading.BrokenBarrierError):  # a lone call asks all the same
        _arrived.wait(timeout=60)  # both calls in flight before either asks
    question = f"q-{request['id']}"
    schema = {"type": "object", "properties": {"username": {"type": "string"}}}
    params = {"mode": "form", "message": message, "requestedSchema": schema}
    out({"jsonrpc": "2.0", "id": question, "method": "elicitation/create", "params": params})
    with _answered:
        _answered.wait_for(lambda: question in _answers, timeout=60)
        answer = _answers.pop(question, {})
    username = ((answer.get("result") or {}).get("content") or {}).get("username")
    text = f"answered {username}" if username is not None else f"not answered: {answer.get('error')}"
    out({"jsonrpc": "2.0", "id": request["id"], "result": {"content": [{"type": "text", "text": text}]}})


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    method = request.get("method")
    if method == "initialize":
        info = {"name": "paired-asks", "version": "1"}
        return {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": info}
    if method == "tools/list":
        return {"tools": [{"name": "ask", "inputSchema": {"type": "object"}}]}
    if method == "ping":
        return {}
    return None


for line in sys.stdin:
    request = json.loads(line)
    if "method" not in request and "id" in request:  # the client's answer to a question
        with _answered:
            _answers[str(request["id"])] = request
            _answered.notify_all()
        continue
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
