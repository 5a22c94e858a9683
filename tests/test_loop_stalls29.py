"""Work that held the gateway's event loop for 0.1-0.3 s, moved off it, with the behaviour kept.

- Every HTTP client the gateway made (each backend session to an HTTP backend, each token request) had httpx
  parse the CA bundle for a TLS context of its own, on the loop: a client declaring sampling gets backend sessions
  of its own, so it repeated that without limit. The context is now made once per trust setting, in a worker
  thread (vmcp_opt/backends/tls.py).
- A tool's first call walked its whole input schema on the loop (15,000 properties) before deciding to check in a
  worker thread; only a bounded size walk runs there now (vmcp_opt/arguments.py, `_inline`).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

import vmcp_opt.arguments as arguments
from tests.support import running_gateway, write_config
from tests.test_conn_followups import private_ca, tls_backend
from tests.test_failure_recovery import text
from vmcp_opt.arguments import ArgumentError, ArgumentValidator
from vmcp_opt.backends import tls

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MADE = "TLS context for outgoing HTTPS made"
# Properties of a wide schema (the reviewer's repro), the first TYPED of them integers, the others anything: all typed,
# the schema would pass the 256 KB cap of a listed tool's schema.
WIDE = 15_000
TYPED = 100


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="fine"), model="test-model"
    )


async def test_sessions_to_an_https_backend_share_one_tls_context(tmp_path: Path) -> None:
    """Clients declaring sampling each get a backend session of their own: all of them, and the calls over them,
    use the one context made at the first (one log line), trusting the CA that SSL_CERT_FILE names."""
    ca, cert, key = private_ca(tmp_path / "ca", "vmcp loop-stall CA")
    with tls_backend(tmp_path, cert, key) as url:
        backends = [{"name": "private", "transport": "streamable-http", "url": url}]
        config = write_config(tmp_path, {"backends": backends, "failure": {"restart": {"enabled": False}}})
        with running_gateway(config, env={"SSL_CERT_FILE": str(ca)}) as gateway:
            answers = []
            for _ in range(4):
                async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
                    answered = await client.call_tool("private_hello", {})
                    answers.append(text(answered))
            assert answers == ["hello over TLS"] * 4
            output = gateway.output()
    assert output.count(MADE) == 1, output
    assert f"{MADE}: CAs from SSL_CERT_FILE ({ca})" in output


async def test_the_tls_context_is_made_once_in_a_worker_thread_and_a_broken_bundle_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # a setting of this test's own: nothing cached for it yet
    with pytest.raises(FileNotFoundError):
        await tls.client_context()

    # Not kept: once the file is there, the next client gets a context (as with httpx, which read it each time).
    bundle.write_bytes(private_ca(tmp_path / "ca", "vmcp bundle CA")[0].read_bytes())
    made: list[Any] = [None] * 8
    caplog.set_level("INFO", logger=tls.__name__)

    async def one(index: int) -> None:
        made[index] = await tls.client_context()

    async with anyio.create_task_group() as group:
        for index in range(len(made)):
            group.start_soon(one, index)
    assert all(context is made[0] for context in made)
    records = [record for record in caplog.records if MADE in record.getMessage()]
    assert len(records) == 1 and records[0].thread != threading.get_ident()  # not on the event loop's thread
    assert await tls.client_context() is made[0]


def _wide_schema() -> dict[str, Any]:
    properties = {f"p{i}": {"type": "integer"} if i < TYPED else {} for i in range(WIDE)}
    return {"type": "object", "properties": properties, "required": ["p1"], "additionalProperties": False}


async def test_a_wide_schema_is_walked_in_the_worker_thread_at_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-schema walks (`is_plain`, the costly-keyword search) run where the check runs, not on the loop;
    the verdicts are those of the check on the loop."""
    loop_thread = threading.get_ident()
    walked_on: list[int] = []

    def spying(walk: Callable[..., bool]) -> Callable[..., bool]:
        def spy(*args: Any) -> bool:
            walked_on.append(threading.get_ident())
            return walk(*args)

        return spy

    monkeypatch.setattr(arguments, "is_plain", spying(arguments.is_plain))
    monkeypatch.setattr(arguments, "_has_costly_keyword", spying(arguments._has_costly_keyword))
    validator = ArgumentValidator(timeout=30.0)
    schema = _wide_schema()
    await validator.check_async("wide", schema, {"p1": 1, "p2": 2})
    with pytest.raises(ArgumentError, match="p1"):
        await validator.check_async("wide", schema, {"p1": "one"})
    assert walked_on and loop_thread not in walked_on

    small = {"type": "object", "properties": {"a": {"type": "integer"}}}
    walked_on.clear()
    await validator.check_async("small", small, {"a": 1})  # a small schema is still checked inline
    assert walked_on and set(walked_on) == {loop_thread}


# A stdio backend with one tool whose input schema has WIDE properties: wide_server.py.
WIDE_SERVER = r"""
import json, sys

WIDE = int(sys.argv[1])
TYPED = int(sys.argv[2])
properties = {f"p{i}": {"type": "integer"} if i < TYPED else {} for i in range(WIDE)}
schema = {"type": "object", "properties": properties, "required": ["p1"], "additionalProperties": False}
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request or "method" not in request:
        continue
    method, params = request["method"], request.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "wide", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "wide", "inputSchema": schema}]}
    elif method == "tools/call":
        got = json.dumps(params.get("arguments"), sort_keys=True)
        result = {"content": [{"type": "text", "text": "got " + got}]}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\n")
    sys.stdout.flush()
"""


async def test_the_first_call_to_a_tool_with_a_wide_schema_is_checked_as_before(tmp_path: Path) -> None:
    script = tmp_path / "wide_server.py"
    script.write_text(WIDE_SERVER, encoding="utf-8")
    backends = [{"name": "w", "command": sys.executable, "args": [str(script), str(WIDE), str(TYPED)]}]
    config = write_config(tmp_path, {"backends": backends, "health": {"interval": 3600}})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            refused = await client.call_tool("w_wide", {"p1": "one"})  # the first call: refused, never sent
            accepted = await client.call_tool("w_wide", {"p1": 1, "p14999": "any"})
            missing = await client.call_tool("w_wide", {"p2": 2})
            unknown = await client.call_tool("w_wide", {"p1": 1, "q": 2})
    assert refused.is_error and "'p1'" in text(refused), text(refused)
    assert not accepted.is_error and text(accepted) == "got " + json.dumps({"p1": 1, "p14999": "any"}), text(accepted)
    assert missing.is_error and "p1" in text(missing), text(missing)
    assert unknown.is_error and "'q'" in text(unknown), text(unknown)
