"""A stdio MCP server written without the SDK, for tests that need a backend to misbehave in ways no SDK server
would: it starts in a few milliseconds and answers initialize, ping, tools/list and tools/call by hand, one
JSON-RPC message a line. It exits when its stdin closes, as MCP servers do. Each test starts it with the flags
for the behaviour it needs (in a backend's `args`):

    python tests/scripted_backend.py [--exit-in-call STATUS] [--kill-in-call] [--last-words TEXT]
                                     [--garbage-answers] [--children PIDFILE]

The tool `ok` is always listed and answers the text "fine". The flags add tools and processes:

`--exit-in-call STATUS`
    lists the tool `exit`: a call to it makes the process exit with STATUS while answering that tools/call,
    without answering (after writing the `--last-words` line, if given, to stderr).
`--kill-in-call`
    lists the tool `kill`: a call to it makes the process SIGKILL itself, likewise without answering.
`--last-words TEXT`
    the stderr line written just before `exit` or `kill` ends the process. `{NAME}` in TEXT is replaced by the
    environment variable NAME, so that a secret can come from the backend's `env` (the gateway refuses a
    secret-looking `${VAR}` on a command line).
`--garbage-answers`
    lists the tools that answer what no SDK server would: `garbled` (a line that is not JSON), `invalid` (a
    result that fails validation: its content is not a list), `big` (a text of 200,000 bytes) and `garbage`,
    which first writes `lines` (an argument) lines to stdout that are JSON but not JSON-RPC, each quoting a
    secret word `hunter2-<n>`, then answers "ok".
`--children PIDFILE`
    at start, starts two helpers and writes their pids to PIDFILE, one a line: one in the backend's process
    group that ignores SIGTERM and holds the backend's stdout open, one in a session of its own (`setsid`, as a
    daemon does). Each sleeps for ten minutes: only the gateway's shutdown can end them.

Tests import `scripted(name, *flags)` from here for a backend's config entry that runs this file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
HELPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def scripted(name: str, *flags: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A stdio backend entry for a gateway's config: this server, named `name`, run with `flags`."""
    entry: dict[str, Any] = {"name": name, "command": sys.executable, "args": [str(SCRIPT), *flags]}
    if env is not None:
        entry["env"] = env
    return entry


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A scripted stdio MCP backend for tests (see its docstring).")
    parser.add_argument("--exit-in-call", type=int, metavar="STATUS")
    parser.add_argument("--kill-in-call", action="store_true")
    parser.add_argument("--last-words", metavar="TEXT")
    parser.add_argument("--garbage-answers", action="store_true")
    parser.add_argument("--children", metavar="PIDFILE")
    return parser.parse_args(argv)


def tool_names(flags: argparse.Namespace) -> list[str]:
    names = ["ok"]
    if flags.exit_in_call is not None:
        names.append("exit")
    if flags.kill_in_call:
        names.append("kill")
    if flags.garbage_answers:
        names += ["garbled", "invalid", "big", "garbage"]
    return names


def emit(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def send(message: dict[str, Any]) -> None:
    emit((json.dumps(message) + "\n").encode())


def refuse(request_id: Any, code: int, message: str) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}]}


def start_children(pidfile: str) -> None:
    in_group = subprocess.Popen([sys.executable, "-c", HELPER])
    own_session = subprocess.Popen([sys.executable, "-c", HELPER], start_new_session=True, stdout=subprocess.DEVNULL)
    with open(pidfile, "w", encoding="utf-8") as out:
        out.write(f"{in_group.pid}\n{own_session.pid}\n")


def last_words(flags: argparse.Namespace) -> None:
    """The stderr line a crashing backend leaves, which the gateway reports with the exit status."""
    if flags.last_words is not None:
        print(flags.last_words.format_map(os.environ), file=sys.stderr, flush=True)


def call(flags: argparse.Namespace, request_id: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """The result of a tools/call, or None where the tool writes its own (broken) answer."""
    if name == "exit":  # in the middle of the call, as a backend that crashes does: no answer
        last_words(flags)
        os._exit(flags.exit_in_call)
    if name == "kill":
        last_words(flags)
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "garbled":
        emit(b'{"jsonrpc": "2.0", "id": %s, "result": {"content": [ garbage\n' % json.dumps(request_id).encode())
        return None
    if name == "invalid":
        return {"content": "not a list"}
    if name == "big":
        return text("x" * 200_000)
    if name == "garbage":
        for n in range(int(arguments.get("lines", 0))):
            emit(b'{"not": "json-rpc", "secret": "hunter2-%d"}\n' % n)
        return text("ok")
    return text("fine")


def result_of(flags: argparse.Namespace, request_id: Any, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The result for a request this server knows, or None where a tool wrote its own answer (or none)."""
    if method == "initialize":
        info = {"name": "scripted", "version": "1"}
        return {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": info}
    if method == "tools/list":
        return {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in tool_names(flags)]}
    if method == "tools/call":
        return call(flags, request_id, params["name"], params.get("arguments") or {})
    return {}  # ping


def answer(flags: argparse.Namespace, request: dict[str, Any]) -> None:
    request_id, method, params = request["id"], request["method"], request.get("params") or {}
    if method not in ("initialize", "tools/list", "tools/call", "ping"):
        refuse(request_id, -32601, f"method not found: {method}")
    elif method == "tools/call" and params.get("name") not in tool_names(flags):
        refuse(request_id, -32602, f"unknown tool: {params.get('name')}")
    elif (result := result_of(flags, request_id, method, params)) is not None:
        send({"jsonrpc": "2.0", "id": request_id, "result": result})


def main() -> None:
    flags = parse(sys.argv[1:])
    if flags.children is not None:
        start_children(flags.children)
    for line in sys.stdin:
        request = json.loads(line)
        if "id" in request and "method" in request:  # notifications and answers need no reply
            answer(flags, request)


if __name__ == "__main__":
    main()
