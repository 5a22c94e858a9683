"""A refresh of the incoming-token keys (auth/jwks.py) always counts against `jwks_refresh_interval` (or, with no
key held, the retry delay), whatever ends it: a client that hangs up while it runs, or an error no one foresaw.

A real gateway with incoming OAuth; the issuer is a loopback HTTP server in this process (tests/support.py
`GatedServer`) that counts the requests it gets. Clients speak raw HTTP over a socket so that they can hang up
mid-request.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import GatedServer, JsonAnswers, gated, running_gateway
from tests.test_auth_e2e import INITIALIZE
from tests.test_jwks23_refresh_deadline import (
    JWKS,
    POLL_DEADLINE,
    RFC8414,
    UNAVAILABLE,
    gated_issuer,
    gateway_config,
    initialize,
    public,
    signed,
)

pytestmark = pytest.mark.slow


def request_bytes(url: str, token: str) -> bytes:
    parts = urlsplit(url)
    body = json.dumps(INITIALIZE).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def hang_up_once_asked_or_answered(url: str, token: str, issuer: GatedServer) -> bytes:
    """Send a request, and close the connection as soon as the issuer is asked anything more (the gateway's fetch
    is then held there) or the gateway answers: what it answered, b"" when the client hung up unanswered."""
    asked = sum(issuer.asked.values())
    parts = urlsplit(url)
    deadline = time.monotonic() + POLL_DEADLINE
    with socket.create_connection((parts.hostname, parts.port)) as client:
        client.sendall(request_bytes(url, token))
        client.settimeout(0.02)
        while sum(issuer.asked.values()) == asked:
            assert time.monotonic() < deadline, issuer.asked
            try:
                return client.recv(65536)
            except TimeoutError:
                continue
    return b""


def test_a_refresh_whose_client_hung_up_counts_and_made_up_kids_then_cost_the_issuer_nothing(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with gated_issuer() as issuer:
        issuer.keys = [public(key, "k1")]
        config = gateway_config(tmp_path, issuer.base, timeout=60, jwks_refresh_interval=60)
        # uvicorn does not cancel a request whose client left, so today this holds without jwks.py's shield too; it
        # fails when something in front of authentication cancels on a disconnect (checked with such a watch).
        with running_gateway(config) as gateway:
            # The first token's fetch of the keys is held at the issuer, and its client hangs up meanwhile.
            assert (
                hang_up_once_asked_or_answered(gateway.url, signed(key, "k1", issuer.base, gateway.url), issuer) == b""
            )
            issuer.gate.set()
            # That fetch went on: the keys it brought serve (a cut-off one would have left this token to fetch anew).
            assert initialize(gateway.url, signed(key, "k1", issuer.base, gateway.url)).status_code == 200
            assert (issuer.asked[RFC8414], issuer.asked[JWKS]) == (1, 1), issuer.asked
            # Clients sending made-up key ids, each hanging up at once if the gateway asks the issuer again.
            for n in range(4):
                issuer.gate.clear()
                token = signed(key, f"made-up-{n}", issuer.base, gateway.url)
                answered = hang_up_once_asked_or_answered(gateway.url, token, issuer)
                issuer.gate.set()
                assert answered.startswith(b"HTTP/1.1 503"), (answered[:200], issuer.asked)  # within the interval
            assert (issuer.asked[RFC8414], issuer.asked[JWKS]) == (1, 1), issuer.asked


class _UnfetchableJwksIssuer(JsonAnswers):
    """RFC 8414 metadata whose `jwks_uri` is the server's `jwks_uri`: one the HTTP client cannot even request."""

    server: GatedServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.asked[self.path] += 1
        if self.path != RFC8414:
            self._answer(404, {})
            return
        self._answer(200, {"issuer": self.server.base, "jwks_uri": self.server.jwks_uri})  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "jwks_uri",
    [
        "http://[zz]/jwks",  # httpx2.InvalidURL, which is not an httpx2.HTTPError
        "http://127.0.0.1:99999999999999999999/jwks",  # OverflowError from the socket layer
    ],
)
def test_a_refresh_failing_with_an_unforeseen_error_is_a_503_and_counts(tmp_path: Path, jwks_uri: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = GatedServer(_UnfetchableJwksIssuer)
    server.jwks_uri = jwks_uri  # type: ignore[attr-defined]
    with gated(server) as issuer:
        config = gateway_config(tmp_path, issuer.base, timeout=5, jwks_refresh_interval=60)
        with running_gateway(config) as gateway:
            tokens = 6
            started = time.monotonic()
            answers = [initialize(gateway.url, signed(key, "k1", issuer.base, gateway.url)) for _ in range(tokens)]
            elapsed = time.monotonic() - started
            # With no key held the keys are asked for again at most every 5 s (jwks.py NO_KEYS_RETRY), not per token.
            assert issuer.asked[RFC8414] <= 1 + elapsed // 5 < tokens, (issuer.asked, elapsed)
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json() == {"error": "temporarily_unavailable", "error_description": UNAVAILABLE}
            log = gateway.output()
            assert "fetching the issuer's keys" in log and "Traceback" not in log
