"""Real processes for end-to-end tests: the gateway as `vmcp serve`, backends as their own servers.

Past ~450 lines: one module that every end-to-end test imports, so that a way to start, configure, patch or wait
for a process is written once; split by kind, each test file would import from three."""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx2
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEMO_SERVER = EXAMPLES / "backends" / "demo_server.py"
NODE_BIN = ROOT / "node_modules" / ".bin"


def unavailable(reason: str) -> NoReturn:
    """A real part a test needs is missing: skipped on a developer's machine, a failure in CI (`CI=true`),
    where the project's own set-up must have installed it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def api_keys_file(path: Path, groups: dict[str, list[str]]) -> dict[str, str]:
    """An API keys file at `path` with a new key for each subject of `groups` (subject -> its groups); the
    keys by subject."""
    from vmcp_opt.auth.api_keys import new_key

    keys, entries = {}, []
    for subject, member_of in groups.items():
        keys[subject], digest = new_key()
        entries.append({"sha256": digest, "subject": subject, "groups": member_of})
    path.write_text(json.dumps(entries))
    return keys


def policed_config(
    directory: Path, groups: dict[str, list[str]], policy: str, config: dict[str, Any]
) -> tuple[Path, dict[str, str]]:
    """`config` behind API keys (a new key for each subject of `groups`) and the Cedar `policy`, written in
    `directory`: the config's path, and the keys by subject."""
    keys = api_keys_file(directory / "keys.json", groups)
    (directory / "policy.cedar").write_text(policy)
    auth = {
        "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
        "authorization": {"policies": "policy.cedar"},
    }
    return write_config(directory, {**config, "auth": auth}), keys


def bearer_client(url: str, credential: str, mode: str = "auto") -> Any:
    """An SDK client (`mode`: the SDK's connect mode) to the gateway at `url` sending `Authorization: Bearer
    <credential>`."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"}, timeout=60)
    return Client(streamable_http_client(url, http_client=http), mode=mode)  # type: ignore[arg-type]


class GatedServer(http.server.ThreadingHTTPServer):
    """A local HTTP server (an identity provider, say) on a free loopback port whose handlers may hold their
    answers until `gate` opens; `asked` counts the requests by path."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.gate = threading.Event()
        self.asked: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()


class JsonAnswers(http.server.BaseHTTPRequestHandler):
    """A handler that answers JSON and logs nothing."""

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the gateway gave up on this request

    def log_message(self, *args: object) -> None:
        pass


GatedT = TypeVar("GatedT", bound=GatedServer)


@contextlib.contextmanager
def gated(server: GatedT) -> Iterator[GatedT]:
    """`server` serving in a thread; at the end its gate opens (held handlers finish) and it stops."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.gate.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A loopback port no other `free_port` (of any process: `make test` runs two pytest workers) or outgoing
    connection is handed for the next minute, while a server binding it can: left in TIME_WAIT by a connection
    this side closed first, which the kernel's choice of a free port skips and SO_REUSEADDR (set by uvicorn,
    asyncio, http.server, Node, Go, Redis and nginx alike) binds over. A port merely bound and closed could be
    handed to another worker before the server meant for it listens."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # this side first: the TIME_WAIT is on the listening port
    return port


def demo_backend(name: str, **extra: Any) -> dict[str, Any]:
    """A stdio demo backend entry for a config."""
    return {"name": name, "command": sys.executable, "args": [str(DEMO_SERVER)], **extra}


def write_config(directory: Path, config: dict[str, Any], name: str = "vmcp.yaml") -> Path:
    """A config file. The optimizer is off unless `config` turns it on: it is on by default, and most tests
    list and call backend tools directly. Requests made during start-up wait for every backend's first
    answer (`server.startup_wait` 60 s, not 5), so a loaded machine cannot make a test see half a catalogue."""
    config = {
        **config,
        "optimizer": {"enabled": False, **config.get("optimizer", {})},
        "server": {"startup_wait": 60, **config.get("server", {})},
    }
    path = directory / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# The answering loop of a stdio backend written without the SDK (`tools_backend`), one JSON-RPC message a line.
TOOLS_BACKEND_LOOP = r"""
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request:
        continue
    method = request.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "t", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = RESULTS.get(request["params"]["name"], CALLED)
    elif method == "ping":
        result = {}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}), flush=True)
"""


def tools_backend(name: str, script: Path, setup: str, **extra: Any) -> dict[str, Any]:
    """A backend entry for a stdio server that lists and answers what no SDK server would (a schema too wide to
    check, a result that breaks its own output schema), and starts in milliseconds. `setup` is Python that defines
    `TOOLS` (tools/list's answer) and may define `RESULTS` (a tools/call's result by tool name; others get the
    text "called"); it is written with the loop to `script`."""
    head = 'import json, sys\nRESULTS = {}\nCALLED = {"content": [{"type": "text", "text": "called"}]}\n'
    script.write_text(head + setup + TOOLS_BACKEND_LOOP, encoding="utf-8")
    return {"name": name, "command": sys.executable, "args": [str(script)], **extra}


def sitecustomize(hook: Path, source: str) -> dict[str, str]:
    """The environment under which every Python process a test starts (gateway, backends, children) runs
    `source` at start-up, before the code under test: a patch or a recorder the process cannot be asked for
    over MCP. `hook` is made and holds `sitecustomize.py` (and whatever the hook writes beside it); it goes
    first on PYTHONPATH, ahead of the test run's own, which it keeps."""
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(source, encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)}


def patched_on_import(module: str, patch: str) -> str:
    """`sitecustomize` source (for `sitecustomize`) that runs `patch`, the source of `def patch(module): ...`, on
    `module` as it is first imported in the process under test: a module attribute replaced or wrapped. Each
    block keeps its names in a scope of its own, so that blocks for several modules may be joined."""
    body = textwrap.indent(textwrap.dedent(patch).strip(), "    ")
    return f"""
def _install():
    import importlib.abc, importlib.util, sys

{body}

    class _Patch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != {module!r}:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(loaded):
                run(loaded)
                patch(loaded)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Patch())


_install()
"""


# Between two polls of a starting process: it is ready on average half of this before a test sees it, for each
# of the hundreds of gateways and backends the suite starts. A poll is a refused connect or a tiny GET.
POLL_SECONDS = 0.02


def wait_http(
    url: str, timeout: float = 30.0, expect: tuple[int, ...] = (200,), proc: subprocess.Popen[bytes] | None = None
) -> httpx2.Response:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx2.get(url, timeout=2.0)
            if response.status_code in expect:
                return response
        except httpx2.HTTPError as exc:
            last = exc
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout}s (last error: {last})")


def wait_until(condition: Callable[[], object], deadline: float = 60.0, message: str | Callable[[], str] = "") -> None:
    """Polls `condition` until it is true. For effects that come after what a test can see (a log line or a
    file written once the answer that showed the change is sent): a read right after the answer races them.
    `deadline` is a hang guard for a loaded machine, not a bound under test; `message` (or what it returns,
    read only on failure: a gateway's log) says what never came."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            said = message() if callable(message) else message
            raise AssertionError(f"not seen within {deadline:g}s: {said}")
        time.sleep(POLL_SECONDS)


def metric_sample(base: str, name: str, **labels: str) -> float:
    """The value of `/metrics`' sample `name` with exactly `labels` (0 when there is none yet)."""
    text = httpx2.get(f"{base}/metrics", timeout=30).text
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    return 0.0


@contextlib.contextmanager
def http_demo_backend(port: int | None = None, *, sse: bool = False) -> Iterator[str]:
    """The demo backend over streamable HTTP (its /mcp URL) or the legacy SSE transport (its /sse URL)."""
    port = port or free_port()
    flag, path = ("--sse", "/sse") if sse else ("--http", "/mcp")
    proc = subprocess.Popen([sys.executable, str(DEMO_SERVER), flag, "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_http(
            f"http://127.0.0.1:{port}/mcp" if not sse else f"http://127.0.0.1:{port}/messages/",
            expect=(200, 400, 404, 405, 406),
            proc=proc,
        )
        yield url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def serving_mcp(command: list[str], port: int) -> Iterator[str]:
    """A process (`command`) serving streamable HTTP on `port`; yields its /mcp URL once it answers."""
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, expect=(200, 400, 404, 405, 406), proc=proc)
        yield url
    finally:
        stop_process(proc)


class Gateway:
    """A running `vmcp serve` process."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.base = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@contextlib.contextmanager
def running_gateway(
    config_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    wait_ready: bool = True,
    cwd: Path | None = None,
) -> Iterator[Gateway]:
    """`cwd` comes first on `python -m`'s path: a directory holding another copy of `vmcp_opt` runs that copy."""
    with running_gateways(
        config_path, 1, *args, env=env, ready_timeout=ready_timeout, wait_ready=wait_ready, cwd=cwd
    ) as [one]:
        yield one


@contextlib.contextmanager
def running_gateways(
    config_path: Path,
    count: int,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    wait_ready: bool = True,
    cwd: Path | None = None,
) -> Iterator[list[Gateway]]:
    """`count` gateways on one config, all started before any is waited for (replicas starting together)."""
    gateways = [_start_gateway(config_path, args, env, cwd) for _ in range(count)]
    try:
        for gateway in gateways:
            try:
                wait_http(f"{gateway.base}/healthz", timeout=ready_timeout, proc=gateway.proc)
                if wait_ready:
                    wait_started(gateway, ready_timeout)
            except Exception as exc:
                raise RuntimeError(f"gateway did not start: {exc}\n--- gateway log ---\n{gateway.output()}") from exc
        yield gateways
    finally:
        stop_processes([gateway.proc for gateway in gateways])


def _start_gateway(config_path: Path, args: tuple[str, ...], env: dict[str, str] | None, cwd: Path | None) -> Gateway:
    port = free_port()
    log = config_path.parent / f"gateway-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config_path), "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            cwd=cwd,
        )
    return Gateway(proc, port, log)


def wait_started(gateway: Gateway, timeout: float) -> None:
    """Until `/readyz` is past "starting": the first catalogue is built (the backends connect in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        body = wait_http(f"{gateway.base}/readyz", timeout=timeout, expect=(200, 503), proc=gateway.proc).json()
        if body["status"] != "starting":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"/readyz still says starting after {timeout}s")
        time.sleep(POLL_SECONDS)


def torch_mapped(pid: int) -> bool | None:
    """Whether libtorch is mapped into the process (it is once `import torch` ran); None where /proc has no maps."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    stop_processes([proc], timeout)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM to each, then each waited for (killed after `timeout`): replicas stop side by side, not in turn."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def stdio_gateway(config: Path, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`vmcp serve --stdio -c config` with pipes for stdin and stdout, its stderr written to `stderr`; stopped
    (SIGTERM, then killed) on the way out if it still runs."""
    with stderr.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def counting_http_server(body: bytes = b'{"type": "integer"}') -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every GET with `body`: its base URL and the paths asked for."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()


RAW_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
RAW_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


def raw_session(url: str) -> dict[str, str]:
    """A 2025-11-25 session opened with plain HTTP: the headers its later requests carry."""
    opened = httpx2.post(url, json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=30)
    assert opened.status_code == 200, opened.text
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    headers = {**RAW_HEADERS, **session}
    initialized = httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202
    return headers


def sse_messages(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any] | None]]:
    """(event id, message) per SSE event; a priming event has no message."""
    event_id: str | None = None
    data = ""
    for line in lines:
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if event_id is not None or data:
                yield event_id, json.loads(data) if data else None
            event_id, data = None, ""


ISSUER_SCRIPT = ROOT / "tests" / "oidc" / "issuer.mjs"


@contextlib.contextmanager
def running_issuer(directory: Path, settings: dict[str, Any]) -> Iterator[str]:
    """A real OpenID provider (oidc-provider, tests/oidc/issuer.mjs) on `settings["port"]` with `settings` (its
    signing keys, clients, ...), until the block ends: its URL."""
    from tests.test_conformance import find_node

    node = find_node()
    if node is None or not (ROOT / "node_modules" / "oidc-provider").exists():
        unavailable("needs Node >= 22 and oidc-provider (npm ci)")
    path = directory / "issuer.json"
    path.write_text(json.dumps(settings))
    proc = subprocess.Popen([node, str(ISSUER_SCRIPT), str(path)], stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{settings['port']}"
        wait_http(f"{url}/.well-known/openid-configuration", proc=proc)
        yield url
    finally:
        stop_process(proc)
