"""Six authentication defects of review 27, each over real processes: a real OpenID provider (oidc-provider, as in
test_auth_e2e.py), real gateways, and for discovery a real HTTP server standing in for an issuer's metadata.

1. `claims.subject` set to a claim a user's token lacks: refused naming it, not made the client id (which made
   every such user of one client one caller).
2. Concurrent first uses of one opaque token: one introspection, the budget paid once (they were 429s).
3. An opaque token of 60 KB: 401 unasked (the provider's 400 read as the gateway's own fault, a 503 each time).
4. `vmcp auth check` refuses a token lacking `oauth.required_scopes`, as the gateway does.
5. Discovery passes over an RFC 8414 URL answering something else, and takes the OpenID configuration.
6. Attacker text echoed in `WWW-Authenticate` is printable ASCII only.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import Gateway, demo_backend, free_port, running_gateway, running_issuer, write_config
from tests.test_auth_e2e import CLIENTS, INITIALIZE, OPAQUE, Issuer, private_jwk
from vmcp_opt.auth.jwks import JwksCache, JwksUnavailable

pytestmark = pytest.mark.slow

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SECRET_ENV = {"VMCP_TEST_GATEWAY_SECRET": CLIENTS["gateway"][0]}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = {
        "port": free_port(),
        "jwks": {"keys": [private_jwk(key, "k1")]},
        "clients": [
            {"client_id": name, "client_secret": secret, "groups": groups, "opaque": name in OPAQUE}
            for name, (secret, groups) in CLIENTS.items()
        ],
    }
    with running_issuer(tmp_path_factory.mktemp("issuer27"), settings) as url:
        yield Issuer(url, key)


def oauth_config(issuer: Issuer, claims: dict[str, str] | None = None, **oauth: Any) -> dict[str, Any]:
    incoming: dict[str, Any] = {"mode": "oauth", "oauth": {"issuer": issuer.url, **oauth}}
    if claims:
        incoming["claims"] = claims
    return {"backends": [demo_backend("notes")], "auth": {"incoming": incoming}}


@pytest.fixture(scope="module")
def email_gateway(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Callers are told apart by `email`; every request needs the `notes:write` scope."""
    config = oauth_config(issuer, {"subject": "email"}, required_scopes=["notes:write"])
    with running_gateway(write_config(tmp_path_factory.mktemp("email-gateway"), config)) as running:
        yield running


@pytest.fixture(scope="module")
def opaque_gateway(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Introspects carol's opaque tokens; one address may have two unknown tokens asked about, then hardly any."""
    config = oauth_config(
        issuer,
        introspection_url=f"{issuer.url}/token/introspection",
        client_id="gateway",
        client_secret_env="VMCP_TEST_GATEWAY_SECRET",
        introspection_burst_per_address=2,
        introspection_rate_per_address=0.001,
    )
    with running_gateway(write_config(tmp_path_factory.mktemp("opaque-gateway"), config), env=SECRET_ENV) as running:
        yield running


def post(url: str, token: str) -> httpx2.Response:
    return httpx2.post(url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=60)


def user_token(issuer: Issuer, gateway: Gateway, **claims: Any) -> str:
    """A token the issuer's key signs, with `claims` (None drops one)."""
    now = int(time.time())
    base = {"iss": issuer.url, "aud": gateway.url, "iat": now, "exp": now + 300, "client_id": "webapp"}
    base["scope"] = "mcp notes:write"
    return issuer.sign({name: value for name, value in (base | claims).items() if value is not None})


# --- 1. the configured subject claim -------------------------------------------------------------------------


def test_user_tokens_without_the_configured_subject_claim_are_refused_naming_it_not_made_the_client_id(
    issuer: Issuer, email_gateway: Gateway
) -> None:
    for user in ("user-1", "user-2"):  # before: both were the caller `webapp`, sharing sessions and limits
        refused = post(email_gateway.url, user_token(issuer, email_gateway, sub=user))
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_token"
        assert "`email`" in refused.json()["error_description"]
        assert "claims.subject" in refused.headers["www-authenticate"]
    with_email = post(email_gateway.url, user_token(issuer, email_gateway, sub="user-1", email="u1@corp.example"))
    assert with_email.status_code == 200, with_email.text
    # A client acting for itself (no `sub` at all: client credentials) is still its client id.
    client_itself = post(email_gateway.url, user_token(issuer, email_gateway))
    assert client_itself.status_code == 200, client_itself.text


# --- 2. one introspection for concurrent first uses ----------------------------------------------------------


async def concurrent_statuses(url: str, token: str, count: int) -> collections.Counter[int]:
    headers = HEADERS | {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(*(client.post(url, json=INITIALIZE, headers=headers) for _ in range(count)))
    return collections.Counter(answer.status_code for answer in answers)


def test_concurrent_first_uses_of_one_opaque_token_share_one_introspection_and_pay_the_budget_once(
    issuer: Issuer, opaque_gateway: Gateway
) -> None:
    first = issuer.token("carol", opaque_gateway.url)
    statuses = asyncio.run(concurrent_statuses(opaque_gateway.url, first, 30))
    assert statuses == {200: 30}  # before: this address's burst of 2 asked, the rest 429
    # The burst of 2 paid once for all 30: another new token of this address is still asked about.
    second = post(opaque_gateway.url, issuer.token("carol", opaque_gateway.url))
    assert second.status_code == 200, second.text
    assert "token introspection answered" not in opaque_gateway.output()


# --- 3. an opaque token longer than any provider issues ------------------------------------------------------


def test_an_opaque_token_of_60_kb_is_refused_401_unasked_not_a_503_blamed_on_the_gateways_credentials(
    opaque_gateway: Gateway,
) -> None:
    for attempt in range(2):
        refused = post(opaque_gateway.url, "A" * 60_000 + str(attempt))
        assert refused.status_code == 401, refused.text  # before: 503, every time
        assert refused.json()["error"] == "invalid_token" and "8192" in refused.json()["error_description"]
    assert "token introspection answered" not in opaque_gateway.output()  # the provider was never asked


# --- 4. `vmcp auth check` and the required scopes --------------------------------------------------------------


def test_vmcp_auth_check_refuses_a_token_without_the_required_scopes_as_the_gateway_does(
    issuer: Issuer, email_gateway: Gateway, tmp_path: Path
) -> None:
    token = user_token(issuer, email_gateway, sub="u", email="u@corp.example", scope="mcp")
    at_gateway = post(email_gateway.url, token)
    assert at_gateway.status_code == 403 and at_gateway.json()["error"] == "insufficient_scope"
    config = oauth_config(issuer, {"subject": "email"}, required_scopes=["notes:write"])
    path = write_config(tmp_path, config)
    command = [sys.executable, "-m", "vmcp_opt", "auth", "check", "-c", str(path), "--port", str(email_gateway.port)]
    env = {**os.environ, "VMCP_CREDENTIAL": token, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout  # before: 0, and the tools the caller "may" use
    assert "403 insufficient_scope" in done.stderr and "notes:write" in done.stderr


# --- 5. discovery past a metadata URL that answers something else ----------------------------------------------

RFC8414 = "/.well-known/oauth-authorization-server/tenant"
OPENID = "/tenant/.well-known/openid-configuration"


class MetadataServer:
    """An issuer at `<server>/tenant` (a local HTTP server): its JWKS at `/tenant/jwks`, and at each other path
    what `answers` holds (a status and a body), else 404."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.answers: dict[str, tuple[int, bytes]] = {}
        public = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key())), "kid": "k1"}
        answers = self.answers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.origin, self.issuer = origin, f"{origin}/tenant"
        answers["/tenant/jwks"] = (200, json.dumps({"keys": [public]}).encode())

    def metadata(self, issuer: str) -> bytes:
        return json.dumps({"issuer": issuer, "jwks_uri": f"{self.issuer}/jwks"}).encode()


@pytest.fixture
def metadata_server() -> Iterator[MetadataServer]:
    served = MetadataServer()
    threading.Thread(target=served.server.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


def test_an_rfc8414_url_answering_an_html_page_is_passed_over_for_the_openid_configuration(
    metadata_server: MetadataServer, tmp_path: Path
) -> None:
    metadata_server.answers[RFC8414] = (200, b"<html><body>the single-page app</body></html>")
    metadata_server.answers[OPENID] = (200, metadata_server.metadata(metadata_server.issuer))
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "oauth", "oauth": {"issuer": metadata_server.issuer}}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        now = int(time.time())
        claims = {"iss": metadata_server.issuer, "sub": "alice", "aud": gateway.url, "iat": now, "exp": now + 300}
        token = jwt.encode(claims, metadata_server.key, algorithm="RS256", headers={"kid": "k1"})
        accepted = post(gateway.url, token)
        assert accepted.status_code == 200, accepted.text  # before: 503, for every token


@pytest.mark.parametrize("answer", ["empty", "another issuer's"])
def test_an_rfc8414_answer_without_this_issuers_jwks_uri_is_passed_over(
    metadata_server: MetadataServer, answer: str
) -> None:
    body = b"{}" if answer == "empty" else metadata_server.metadata(metadata_server.origin)
    metadata_server.answers[RFC8414] = (200, body)
    metadata_server.answers[OPENID] = (200, metadata_server.metadata(metadata_server.issuer))
    cache = JwksCache(metadata_server.issuer, timeout=10)
    assert asyncio.run(cache.key("k1", "RS256")) is not None


def test_discovery_fails_only_when_no_metadata_url_answers_and_says_why_of_each(
    metadata_server: MetadataServer, caplog: pytest.LogCaptureFixture
) -> None:
    metadata_server.answers[RFC8414] = (200, b"<html></html>")
    metadata_server.answers[OPENID] = (200, metadata_server.metadata(metadata_server.origin))
    cache = JwksCache(metadata_server.issuer, timeout=10)
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.auth.jwks"), pytest.raises(JwksUnavailable):
        asyncio.run(cache.key("k1", "RS256"))
    reason = " ".join(record.getMessage() for record in caplog.records)
    assert f"{metadata_server.origin}{RFC8414}: not JSON" in reason
    assert f"{metadata_server.origin}{OPENID}: its `issuer` is '{metadata_server.origin}'" in reason
    assert f"{metadata_server.origin}/.well-known/openid-configuration/tenant: HTTP 404" in reason


# --- 6. what WWW-Authenticate may carry ------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_attacker_text_in_www_authenticate_is_printable_ascii_and_the_body_keeps_it(opaque_gateway: Gateway) -> None:
    header = b64(json.dumps({"alg": 'HS256\u20ac\u4e2d"\\', "typ": "JWT"}).encode())
    refused = post(opaque_gateway.url, f"{header}.e30.c2ln")
    assert refused.status_code == 401
    raw = dict(refused.headers.raw)[b"www-authenticate"]
    assert all(0x20 <= byte <= 0x7E for byte in raw), raw  # RFC 6750 §3: printable ASCII
    description = re.search(rb'error_description="([^"\\\\]*)"', raw)  # no quote or backslash inside
    assert description is not None, raw
    assert description.group(1).startswith(b"signing algorithm 'HS256") and b"is not accepted" in raw
    assert "HS256\u20ac\u4e2d" in refused.json()["error_description"]  # the JSON body says it exactly
