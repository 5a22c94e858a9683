"""What the issuer's key and introspection endpoints can make a real gateway do: a JWKS or an introspection answer
that drips forever, one of 20 MB, one whose `kid` is not a string, and a JWKS naming two keys by one `kid`.

The endpoints are a tiny local HTTP server (the issuer's own, oidc-provider, serves none of these); tokens are
signed here with keys this module makes. A fetch is bounded in time and size, so a token waits at most
`oauth.timeout` for an answer (a 503 the client retries) and never holds the gateway on a trickling server; a
key set the gateway cannot read in part is read for the keys it can.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import demo_backend, running_gateway, write_config
from tests.test_auth_e2e import INITIALIZE, private_jwk

pytestmark = pytest.mark.slow

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
ISSUER = "http://127.0.0.1:9/issuer"  # never fetched: the JWKS is configured by its URL
Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


def drip(handler: http.server.BaseHTTPRequestHandler) -> None:
    """A 200 whose body comes a byte at a time, each well within a read timeout, and never ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "100000000")
    handler.end_headers()
    try:
        while True:
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:  # the gateway hung up: what a bounded fetch does
        return


def serve_json(document: Any, *, gzipped: bool = False) -> Answer:
    """`document`, gzipped (whatever the client asked for) when told."""
    body = json.dumps(document).encode()
    if gzipped:
        body = gzip.compress(body)

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if gzipped:
            handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@contextmanager
def endpoint(answer: Answer) -> Iterator[str]:
    """A local HTTP server answering every GET and POST with `answer`: its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer(self)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/keys"
    finally:
        server.shutdown()
        server.server_close()


def gateway_config(directory: Path, **oauth: Any) -> Path:
    settings = {"issuer": ISSUER, "timeout": 1.0, **oauth}
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": settings}}}
    return write_config(directory, config)


def signed(key: Any, audience: str, kid: str | None = "k1", algorithm: str = "RS256") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": audience, "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid is not None else None)


def initialize(url: str, token: str) -> httpx2.Response:
    """Generous: a bounded fetch answers within `oauth.timeout` (1 s); an unbounded one never does."""
    return httpx2.post(url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=60)


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def public(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name in ("kty", "n", "e", "kid", "alg", "use")}


def test_a_jwks_that_drips_forever_is_a_503_within_the_timeout_not_a_hung_request(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with endpoint(drip) as jwks_url, running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway:
        answer = initialize(gateway.url, signed(key, gateway.url))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable"
        assert "auth.incoming.oauth.timeout" in gateway.output()  # the operator is told which bound it hit


def test_a_jwks_of_20_mb_is_refused_unread_rather_than_held_in_memory(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    huge = {"keys": [public(private_jwk(key, "k1"))], "padding": "x" * 20_000_000}
    with endpoint(serve_json(huge)) as jwks_url, running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gw:
        answer = initialize(gw.url, signed(key, gw.url))
        assert answer.status_code == 503, answer.text
        assert "larger than" in gw.output()


@pytest.mark.parametrize("padding", [0, 50_000_000])
def test_a_gzipped_jwks_is_read_and_one_that_inflates_past_the_bound_is_refused(tmp_path: Path, padding: int) -> None:
    """Sent gzipped though asked for uncompressed: 50 MB that gzip to some 50 KB were inflated whole."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = {"keys": [public(private_jwk(key, "k1"))], "padding": "x" * padding}
    with (
        endpoint(serve_json(keys, gzipped=True)) as jwks_url,
        running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway,
    ):
        answer = initialize(gateway.url, signed(key, gateway.url))
        assert answer.status_code == (503 if padding else 200), answer.text
        assert ("larger than" in gateway.output()) == bool(padding)


def test_a_jwks_key_whose_kid_is_not_a_string_is_skipped_and_the_others_still_verify(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = public(private_jwk(key, "k1"))
    odd = {**good, "kid": ["k1"]}  # a list: unhashable, and no token header can name it
    with (
        endpoint(serve_json({"keys": [odd, good]})) as jwks_url,
        running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway,
    ):
        answer = initialize(gateway.url, signed(key, gateway.url))
        assert answer.status_code == 200, answer.text
        assert "Traceback" not in gateway.output()


@pytest.mark.parametrize("kid", ["k1", None])
def test_two_keys_of_different_types_under_one_kid_each_verify_its_own_tokens(tmp_path: Path, kid: str | None) -> None:
    """RFC 7517 §4.5: keys may share a `kid` when their `kty` differs (or both have none, each the only key of
    its type); the last one listed hid the others."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    listed = [public(private_jwk(rsa_key, "k1")), ec_jwk(ec_key, "k1")]
    keys = {"keys": [{**jwk, "kid": kid} if kid else {k: v for k, v in jwk.items() if k != "kid"} for jwk in listed]}
    with (
        endpoint(serve_json(keys)) as jwks_url,
        running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway,
    ):
        by_rsa = initialize(gateway.url, signed(rsa_key, gateway.url, kid=kid))
        by_ec = initialize(gateway.url, signed(ec_key, gateway.url, kid=kid, algorithm="ES256"))
        assert (by_rsa.status_code, by_ec.status_code) == (200, 200), (by_rsa.text, by_ec.text)


def test_an_introspection_endpoint_that_drips_forever_is_a_503_within_the_timeout(tmp_path: Path) -> None:
    with endpoint(drip) as url:
        config = gateway_config(
            tmp_path, jwks_url=url, introspection_url=url, client_id="gateway", client_secret_env="VMCP_TEST_SECRET"
        )
        with running_gateway(config, env={"VMCP_TEST_SECRET": "gateway-secret-0123456789"}) as gateway:
            answer = initialize(gateway.url, "an-opaque-token-the-server-must-judge")
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_a_key_published_with_its_private_part_verifies_nothing(tmp_path: Path, kind: str) -> None:
    """Anyone who fetched such a JWKS can sign with the key, so a token it verifies proves nothing: it was
    accepted (EC), or every such token was a 500 (RSA: PyJWT cannot verify with a private key)."""
    if kind == "RSA":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk, algorithm = private_jwk(key, "k1"), "RS256"
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)), "kid": "k1", "alg": "ES256", "use": "sig"}
        algorithm = "ES256"
    assert "d" in jwk
    other = public(private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k2"))
    with (
        endpoint(serve_json({"keys": [jwk, other]})) as jwks_url,
        running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway,
    ):
        answer = initialize(gateway.url, signed(key, gateway.url, algorithm=algorithm))
        assert answer.status_code == 401, answer.text
        assert "the token's signing key is not one of the issuer's" in answer.json()["error_description"]
        assert "publishes the private part of key 'k1'" in gateway.output()
        assert "Traceback" not in gateway.output()


def nested_json(handler: http.server.BaseHTTPRequestHandler) -> None:
    """A key set nested deeper than the parser recurses, well under the size cap."""
    body = b"[" * 200_000
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_jwks_nested_past_the_parsers_recursion_is_a_503_not_a_500(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with endpoint(nested_json) as jwks_url, running_gateway(gateway_config(tmp_path, jwks_url=jwks_url)) as gateway:
        answer = initialize(gateway.url, signed(key, gateway.url))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable"
