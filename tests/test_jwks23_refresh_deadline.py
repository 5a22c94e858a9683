"""The incoming-token key cache's refresh (auth/jwks.py) is bounded as a whole by `auth.incoming.oauth.timeout`,
and only a token whose key is not held waits for it.

A real gateway with incoming OAuth; the issuer is a loopback HTTP server in this process whose metadata and JWKS
answers wait on a gate the test controls: closed, they never answer. Tokens are signed here with keys this module
makes, each with a `jti` of its own so that the gateway's cache of verified tokens never answers for the keys.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import GatedServer, JsonAnswers, demo_backend, gated, running_gateway, write_config
from tests.test_auth_e2e import INITIALIZE, private_jwk

pytestmark = pytest.mark.slow

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
RFC8414 = "/.well-known/oauth-authorization-server"
JWKS = "/jwks"
POLL_DEADLINE = 60.0  # seconds a poll for a state the gateway reaches by itself may take, under load
UNAVAILABLE = "cannot verify tokens now: the authorization server's signing keys cannot be fetched"
_jti = itertools.count()


class GatedIssuer(GatedServer):
    """RFC 8414 metadata naming `/jwks`, which lists `keys`; while `gate` is closed both hold every request
    unanswered. Counts the requests by path."""

    def __init__(self) -> None:
        super().__init__(_IssuerHandler)
        self.keys: list[dict[str, Any]] = []


class _IssuerHandler(JsonAnswers):
    server: GatedIssuer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.asked[self.path] += 1
        if self.path not in (RFC8414, JWKS):
            self._answer(404, {})
            return
        self.server.gate.wait(timeout=300)  # bounded only so that a stray thread ends with the test
        if self.path == RFC8414:
            self._answer(200, {"issuer": self.server.base, "jwks_uri": self.server.base + JWKS})
        else:
            self._answer(200, {"keys": self.server.keys})


def gated_issuer() -> contextlib.AbstractContextManager[GatedIssuer]:
    return gated(GatedIssuer())


def public(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {name: value for name, value in private_jwk(key, kid).items() if name in ("kty", "n", "e", "kid", "alg")}


def gateway_config(directory: Path, issuer: str, **oauth: float) -> Path:
    settings = {"issuer": issuer, **oauth}
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": settings}}}
    return write_config(directory, config)


def signed(key: rsa.RSAPrivateKey, kid: str, issuer: str, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": "alice", "aud": audience, "iat": now, "exp": now + 300, "jti": str(next(_jti))}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def initialize(url: str, token: str) -> httpx2.Response:
    """Generous: an answer the gateway holds past this never comes while the issuer is held."""
    return httpx2.post(url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=30)


def wait_until_asked(issuer: GatedIssuer, path: str, count: int) -> None:
    deadline = time.monotonic() + POLL_DEADLINE
    while issuer.asked[path] < count:
        assert time.monotonic() < deadline, issuer.asked
        time.sleep(0.02)


def served_once_recovered(url: str, sign: Any) -> httpx2.Response:
    """The first answer that is not a 503 (the failed refresh is retried once its interval has passed)."""
    deadline = time.monotonic() + POLL_DEADLINE
    while (answer := initialize(url, sign())).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


def assert_unavailable(answers: list[httpx2.Response], tokens: list[str], issuer: GatedIssuer) -> None:
    """Each a 503 the client retries, saying only that the keys cannot be fetched."""
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": "temporarily_unavailable", "error_description": UNAVAILABLE}
        assert issuer.base not in answer.text and not any(token in answer.text for token in tokens)


def test_a_token_waiting_on_a_refresh_that_never_answers_gets_a_503_at_the_deadline_and_the_next_is_served(
    tmp_path: Path,
) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with gated_issuer() as issuer:
        issuer.keys = [public(k1, "k1")]
        config = gateway_config(tmp_path, issuer.base, timeout=1, jwks_refresh_interval=1)
        with running_gateway(config) as gateway, ThreadPoolExecutor(4) as pool:
            tokens: list[str] = []

            def sign(key: rsa.RSAPrivateKey, kid: str) -> str:
                tokens.append(signed(key, kid, issuer.base, gateway.url))
                return tokens[-1]

            # Discovery never answers, no key is held: every token is a 503 at the deadline, the gateway serves on.
            first = [pool.submit(initialize, gateway.url, sign(k1, "k1")) for _ in range(3)]
            assert_unavailable([future.result() for future in first], tokens, issuer)
            assert httpx2.get(f"{gateway.base}/healthz", timeout=30).status_code == 200
            issuer.gate.set()  # the issuer recovers: a token is served
            assert served_once_recovered(gateway.url, lambda: sign(k1, "k1")).status_code == 200

            # The issuer rotates k2 in and stops answering. A k2 token refreshes the keys once the interval since
            # the last fetch has passed (before it, a 503 with Retry-After: made-up key ids cost the issuer nothing).
            issuer.keys = [public(k1, "k1"), public(k2, "k2")]
            issuer.gate.clear()
            fetched = issuer.asked[JWKS]

            def new_kid_until_a_refresh() -> httpx2.Response:
                while True:
                    answer = initialize(gateway.url, sign(k2, "k2"))
                    if issuer.asked[JWKS] > fetched:
                        return answer  # the token whose refresh never got its answer
                    assert answer.status_code == 503, answer.text
                    time.sleep(0.05)

            refreshing = pool.submit(new_kid_until_a_refresh)
            wait_until_asked(issuer, JWKS, fetched + 1)
            waiting = [pool.submit(initialize, gateway.url, sign(k2, "k2")) for _ in range(2)]
            # The held key serves meanwhile, and so does the rest of the gateway.
            assert initialize(gateway.url, sign(k1, "k1")).status_code == 200
            assert httpx2.get(f"{gateway.base}/healthz", timeout=30).status_code == 200
            assert_unavailable([refreshing.result(), *(future.result() for future in waiting)], tokens, issuer)

            issuer.gate.set()  # the issuer recovers: nothing of the cut-off refresh is left, k2 is served
            assert served_once_recovered(gateway.url, lambda: sign(k2, "k2")).status_code == 200
            log = gateway.output()
            assert "no whole answer within 1s" in log and "auth.incoming.oauth.timeout" in log
            assert not any(token in log for token in tokens)


def test_a_token_of_a_held_key_is_served_while_the_refresh_of_the_expired_key_set_hangs(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with gated_issuer() as issuer:
        issuer.keys = [public(key, "k1")]
        issuer.gate.set()
        # Held keys are refreshed every half second; a refresh may wait on the issuer for a minute.
        config = gateway_config(tmp_path, issuer.base, timeout=60, jwks_max_age=0.5)
        with running_gateway(config) as gateway, ThreadPoolExecutor(2) as pool:
            assert initialize(gateway.url, signed(key, "k1", issuer.base, gateway.url)).status_code == 200
            issuer.gate.clear()

            def until_a_refresh() -> httpx2.Response:
                while True:
                    answer = initialize(gateway.url, signed(key, "k1", issuer.base, gateway.url))
                    if issuer.asked[JWKS] > 1:
                        return answer  # the token that found the keys expired, and waited for their refresh
                    assert answer.status_code == 200, answer.text
                    time.sleep(0.05)

            refreshing = pool.submit(until_a_refresh)
            wait_until_asked(issuer, JWKS, 2)
            # The refresh hangs; tokens signed by the held key do not wait for it.
            for _ in range(3):
                answer = initialize(gateway.url, signed(key, "k1", issuer.base, gateway.url))
                assert answer.status_code == 200, answer.text
            issuer.gate.set()
            assert refreshing.result().status_code == 200
