"""A stream held open ends when the credential that opened it stops being valid (review 29, R4): a revoked API
key's, and an expired token's. Its events stop with it; its client reconnects (or is refused) with the credential
it has then. Streams of credentials still valid go on.

Real gateways (`vmcp serve`) with the demo backend: one behind an API keys file the test edits, one behind OAuth
whose issuer is a loopback HTTP server in this process (tests/test_jwks23_refresh_deadline.py `GatedIssuer`, its
gate open) with `clock_skew: 0`, so a token is refused from its `exp` on. The held streams: a 2025-11-25 session's
GET stream (raw HTTP, read in a thread) and a 2026-07-28 `subscriptions/listen` (a real SDK client).

Waits are bounds on something that happens by itself, never timings asserted: a revoked key's streams end at the
first request after the edit (it re-reads the keys file), far within the bound; without the fix they never end.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.subscriptions import ToolsListChanged

from tests.support import bearer_client, demo_backend, running_gateway, sse_messages, write_config
from tests.test_jwks23_refresh_deadline import GatedIssuer, gated_issuer, public
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MODERN = "2026-07-28"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
# Seconds a stream may take to end once its credential is revoked or expired (it ends at once: this is a bound).
ENDS_WITHIN = 20.0
# Seconds a short-lived token lives: long enough to open its streams on a loaded machine.
TOKEN_LIFE = 6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class HeldGet:
    """A 2025-11-25 session's GET stream read in a thread: the messages it brought, and how it ended."""

    status: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None  # None: the server ended the response (a complete chunked body)
    ended_at: float = 0.0


def session(url: str, credential: str) -> dict[str, str]:
    """A 2025-11-25 session opened with plain HTTP: the headers its later requests carry."""
    auth = {"Authorization": f"Bearer {credential}"}
    opened = httpx2.post(url, json=INITIALIZE, headers=HEADERS | auth, timeout=30)
    assert opened.status_code == 200, opened.text
    headers = (
        HEADERS | auth | {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    )
    initialized = httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202, initialized.text
    return headers


@contextmanager
def held_get(url: str, headers: dict[str, str]) -> Iterator[HeldGet]:
    """The session's GET stream, open (its status read) when the block starts."""
    held = HeldGet()
    opened = threading.Event()

    def read() -> None:
        get_headers = {**headers, "Accept": "text/event-stream"}
        try:
            # No read timeout: only the server ends this stream (the test's bound is on `ended`).
            with httpx2.stream("GET", url, headers=get_headers, timeout=httpx2.Timeout(30, read=None)) as answer:
                held.status = answer.status_code
                opened.set()
                for _, message in sse_messages(answer.iter_lines()):
                    if message is not None:
                        held.messages.append(message)
        except Exception as exc:
            held.failure = type(exc).__name__
        finally:
            held.ended_at = time.time()
            opened.set()
            held.ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(30)
    assert held.status == 200, held.status
    yield held


def add_tool(url: str, headers: dict[str, str], name: str) -> None:
    """A change of the catalogue every caller sees (its list_changed goes to every open stream)."""
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call"}
    call["params"] = {"name": "notes_add_tool", "arguments": {"name": name, "description": "d"}}
    answer = httpx2.post(url, json=call, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text


def list_changed(held: HeldGet) -> bool:
    return any(message.get("method") == "notifications/tools/list_changed" for message in held.messages)


def wait_for(condition: Any, within: float = ENDS_WITHIN) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- a revoked API key ---------------------------------------------------------------------------------------------


def write_keys(path: Path, digests: dict[str, str]) -> None:
    path.write_text(json.dumps({"keys": [{"sha256": digest, "subject": name} for name, digest in digests.items()]}))


async def test_a_revoked_keys_streams_end_and_other_keys_streams_go_on(tmp_path: Path) -> None:
    (alice, alice_digest), (bob, bob_digest) = new_key(), new_key()
    keys = tmp_path / "keys.json"
    write_keys(keys, {"alice": alice_digest, "bob": bob_digest})
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        alice_session, bob_session = session(gateway.url, alice), session(gateway.url, bob)
        async with (
            bearer_client(gateway.url, alice, MODERN) as alice_modern,
            bearer_client(gateway.url, bob, MODERN) as bob_modern,
            alice_modern.listen(tools_list_changed=True) as alice_events,
            bob_modern.listen(tools_list_changed=True) as bob_events,
        ):
            with held_get(gateway.url, alice_session) as alice_get, held_get(gateway.url, bob_session) as bob_get:
                write_keys(keys, {"bob": bob_digest})  # alice's key revoked
                refused = httpx2.post(
                    gateway.url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {alice}"}
                )
                assert refused.status_code == 401  # this request re-read the file

                # Her GET stream ends as a server ends one (a whole chunked body, not a cut connection)...
                assert await anyio.to_thread.run_sync(alice_get.ended.wait, ENDS_WITHIN), "alice's GET stream is open"
                assert alice_get.failure is None
                # ...and so does her listen stream, gracefully (its result: the iteration just stops).
                with anyio.fail_after(ENDS_WITHIN):
                    assert [event async for event in alice_events] == []

                # Bob's streams are open, and hear the change he makes.
                add_tool(gateway.url, bob_session, "after_revocation")
                with anyio.fail_after(ENDS_WITHIN):
                    assert isinstance(await anext(bob_events), ToolsListChanged)
                assert await anyio.to_thread.run_sync(lambda: wait_for(lambda: list_changed(bob_get)))
                assert not bob_get.ended.is_set()
                assert not list_changed(alice_get)


# --- an expired token ----------------------------------------------------------------------------------------------


def token(key: rsa.RSAPrivateKey, issuer: GatedIssuer, audience: str, lifetime: int) -> str:
    now = int(time.time())
    claims = {"iss": issuer.base, "sub": "alice", "aud": audience, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


@contextmanager
def oauth_gateway(directory: Path) -> Iterator[tuple[GatedIssuer, str, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with gated_issuer() as issuer:
        issuer.keys = [public(key, "k1")]
        issuer.gate.set()
        oauth = {"issuer": issuer.base, "clock_skew": 0}
        config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
        with running_gateway(write_config(directory, config)) as gateway:
            yield issuer, gateway.url, key


async def test_a_tokens_streams_end_at_its_expiry(tmp_path: Path) -> None:
    with oauth_gateway(tmp_path) as (issuer, url, key):
        lasting = token(key, issuer, url, 600)
        opened = session(url, lasting)  # the session's principal is alice's, whichever of her tokens is sent
        short = token(key, issuer, url, TOKEN_LIFE)
        expiry = jwt.decode(short, options={"verify_signature": False})["exp"]
        async with (
            bearer_client(url, short, MODERN) as modern,
            modern.listen(tools_list_changed=True) as events,
        ):
            with held_get(url, opened | {"Authorization": f"Bearer {short}"}) as held:
                with anyio.fail_after(TOKEN_LIFE + ENDS_WITHIN):
                    assert [event async for event in events] == []  # ended gracefully, after its expiry
                assert time.time() >= expiry
                assert await anyio.to_thread.run_sync(held.ended.wait, ENDS_WITHIN), "the GET stream is open"
                assert held.failure is None
                assert held.ended_at >= expiry
        # A stream opened with a token still valid is served as before.
        with held_get(url, opened) as again:
            add_tool(url, opened, "after_expiry")
            assert await anyio.to_thread.run_sync(lambda: wait_for(lambda: list_changed(again)))
            assert not again.ended.is_set()
