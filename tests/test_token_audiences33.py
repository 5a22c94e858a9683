"""`auth.incoming.oauth.audiences`: tokens whose audience is no URL (`api://vmcp`, a client id), as Entra ID,
Keycloak and Okta issue them, against a real OpenID provider (tests/oidc/issuer.mjs) and a real `vmcp serve`.

Before the setting existed a token was accepted only with the resource URL as its `aud`, and `resource:
api://vmcp` was refused at load: such users could not sign in at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, demo_backend, free_port, running_gateway, running_issuer, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

AUDIENCE = "api://vmcp"
CLIENTS = {
    "alice": "alice-secret-0123456789abcdef",  # JWT access tokens
    "carol": "carol-secret-0123456789abcdef",  # opaque access tokens: the gateway introspects them
    "gateway": "gateway-secret-0123456789abcdef",  # the gateway's own client, for introspection
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Issuer:
    def __init__(self, url: str, key: rsa.RSAPrivateKey) -> None:
        self.url = url
        self.key = key

    def token(self, client: str, resource: str) -> str:
        """An access token from the provider's token endpoint for `resource` (RFC 8707), which becomes its `aud`."""
        response = httpx2.post(
            f"{self.url}/token",
            data={"grant_type": "client_credentials", "resource": resource, "scope": "mcp"},
            auth=(client, CLIENTS[client]),
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def sign(self, **claims: Any) -> str:
        """A token signed with the issuer's key, for audience shapes the provider does not issue (a list, none)."""
        now = int(time.time())
        return jwt.encode(
            {"iss": self.url, "sub": "dave", "iat": now, "exp": now + 300} | claims,
            self.key,
            algorithm="RS256",
            headers={"kid": "k1"},
        )


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)) | {"kid": "k1", "alg": "RS256", "use": "sig"}
    settings = {
        "port": free_port(),
        "jwks": {"keys": [jwk]},
        "clients": [
            {"client_id": name, "client_secret": secret, "opaque": name == "carol"} for name, secret in CLIENTS.items()
        ],
    }
    with running_issuer(tmp_path_factory.mktemp("issuer"), settings) as url:
        yield Issuer(url, key)


def oauth_config(issuer: Issuer, **oauth: Any) -> dict[str, Any]:
    settings = {
        "issuer": issuer.url,
        "introspection_url": f"{issuer.url}/token/introspection",
        "client_id": "gateway",
        "client_secret_env": "VMCP_TEST_GATEWAY_SECRET",
    }
    return {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": settings | oauth}}}


@pytest.fixture(scope="module")
def gateway(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway accepting tokens for `api://vmcp` (and a client id), not for its resource URL."""
    config = oauth_config(issuer, audiences=[AUDIENCE, "vmcp-client-id"])
    path = write_config(tmp_path_factory.mktemp("audiences"), config)
    with running_gateway(path, env={"VMCP_TEST_GATEWAY_SECRET": CLIENTS["gateway"]}) as running:
        yield running


def initialize(gateway: Gateway, token: str) -> httpx2.Response:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
    }
    return httpx2.post(gateway.url, json=INITIALIZE, headers=headers, timeout=30)


def assert_refused_for_audience(refused: httpx2.Response, expected: str) -> None:
    assert refused.status_code == 401, refused.text
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"'), challenge
    assert f"not issued for this resource (expected aud {expected})" in challenge
    assert "resource_metadata=" in challenge


async def test_a_token_for_a_listed_audience_that_is_no_url_gets_in_over_a_real_mcp_client(
    issuer: Issuer, gateway: Gateway
) -> None:
    token = issuer.token("alice", AUDIENCE)
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == AUDIENCE
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
        tools = await client.list_tools()
    assert "notes_search_notes" in {tool.name for tool in tools.tools}


def test_an_opaque_token_for_a_listed_audience_is_accepted_by_introspection(issuer: Issuer, gateway: Gateway) -> None:
    token = issuer.token("carol", AUDIENCE)
    assert token.count(".") != 2  # opaque: only introspection can vouch for it
    assert initialize(gateway, token).status_code == 200


def test_an_audience_list_holding_any_listed_one_is_accepted(issuer: Issuer, gateway: Gateway) -> None:
    assert initialize(gateway, issuer.sign(aud=["https://other.example.com", "vmcp-client-id"])).status_code == 200
    assert initialize(gateway, issuer.sign(aud="vmcp-client-id")).status_code == 200


def test_tokens_for_audiences_not_listed_are_refused_naming_the_listed_ones(issuer: Issuer, gateway: Gateway) -> None:
    expected = f"one of {AUDIENCE}, vmcp-client-id"
    assert_refused_for_audience(initialize(gateway, issuer.token("alice", "api://other")), expected)
    assert_refused_for_audience(initialize(gateway, issuer.token("carol", "api://other")), expected)
    # Listing audiences replaces the resource URL as the audience: it is accepted only when listed too.
    assert_refused_for_audience(initialize(gateway, issuer.token("alice", gateway.url)), expected)
    no_audience = initialize(gateway, issuer.sign())
    assert no_audience.status_code == 401 and "has no `aud` claim" in no_audience.headers["www-authenticate"]


def test_the_protected_resource_metadata_still_publishes_the_resource_url(gateway: Gateway) -> None:
    metadata = httpx2.get(f"{gateway.base}/.well-known/oauth-protected-resource/mcp", timeout=30).json()
    assert metadata["resource"] == gateway.url


def test_without_audiences_a_token_for_api_vmcp_is_refused_as_before(issuer: Issuer, tmp_path: Path) -> None:
    """The default is the resource URL alone: configs that do not set `audiences` behave as they did."""
    path = write_config(tmp_path, oauth_config(issuer))
    with running_gateway(path, env={"VMCP_TEST_GATEWAY_SECRET": CLIENTS["gateway"]}) as plain:
        assert_refused_for_audience(initialize(plain, issuer.token("alice", AUDIENCE)), plain.url)
        assert initialize(plain, issuer.token("alice", plain.url)).status_code == 200


@pytest.mark.parametrize(
    ("audiences", "says"),
    [
        ([], "an empty list accepts no token; leave `audiences` unset"),
        ([AUDIENCE, ""], "audiences: [1]: an audience must not be empty"),
        ([" api://vmcp"], "has surrounding whitespace"),
        ([f"api://vmcp/{n}" for n in range(33)], "at most 32 audiences, not 33"),
    ],
)
def test_vmcp_validate_refuses_audiences_that_could_match_no_token(
    tmp_path: Path, audiences: list[str], says: str
) -> None:
    oauth = {"issuer": "https://login.example.com", "audiences": audiences}
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
    path = write_config(tmp_path, config)
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in " ".join(done.stderr.split())
