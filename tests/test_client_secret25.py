"""The gateway's client secrets reach a compliant authorization server as written, and a refusal of the gateway's
own introspection client is the operator's 503, never the caller's "unknown token".

The server is `oidc-provider` (tests/oidc/issuer.mjs), which reads HTTP Basic client credentials as RFC 6749
§2.3.1 says: each form-urlencoded. A secret holding `+`, `/`, `=`, `%` or a space, sent raw, was refused (401
`invalid_client` for a `+`, 400 `invalid_request` for a `%`), and that 400 told every caller of an introspecting
gateway that the authorization server did not know their token. Each gateway here is a real `vmcp serve`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    demo_backend,
    free_port,
    running_gateway,
    running_issuer,
    write_config,
)
from tests.test_auth_e2e import INITIALIZE, private_jwk
from tests.test_backend_credentials import whoami_backend

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Characters form-urlencoding changes: `+` (raw, read as a space), `%` (raw, an escape: `%41` a valid one, `%zz`
# not), `/`, `=` and a space, and a `:` in a client id (raw, Basic's own separator).
SERVICE = ("svc:one", "p+q/r=s%41t u%zz==")  # the gateway's client for a backend
INTROSPECTOR = ("gw introspect", "g+w/x=y%42z w%zz==")  # the gateway's own client, for introspection
CAROL = ("carol", "carol-secret-0123456789abcdef")  # gets opaque tokens, which the gateway introspects
WRONG_SECRET = "wrong+secret/%zz 0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clients = [
        {"client_id": client_id, "client_secret": secret, "opaque": client_id == CAROL[0]}
        for client_id, secret in (SERVICE, INTROSPECTOR, CAROL)
    ]
    settings = {"port": free_port(), "jwks": {"keys": [private_jwk(key, "k1")]}, "clients": clients}
    with running_issuer(tmp_path_factory.mktemp("issuer"), settings) as url:
        yield url


def opaque_token(issuer: str, resource: str) -> str:
    response = httpx2.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "resource": resource, "scope": "mcp"},
        auth=CAROL,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    assert token.count(".") != 2  # opaque: only introspection can check it
    return token


def introspecting(issuer: str) -> dict[str, Any]:
    """A config whose incoming OAuth introspects opaque tokens as `INTROSPECTOR`'s id, its secret from
    $VMCP_TEST_INTROSPECTION_SECRET."""
    oauth = {
        "issuer": issuer,
        "introspection_url": f"{issuer}/token/introspection",
        "client_id": INTROSPECTOR[0],
        "client_secret_env": "VMCP_TEST_INTROSPECTION_SECRET",
    }
    return {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}


def post_initialize(url: str, token: str) -> httpx2.Response:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
    }
    return httpx2.post(url, json=INITIALIZE, headers=headers, timeout=30)


async def test_a_backend_token_is_fetched_with_a_secret_holding_plus_slash_equals_percent_and_space(
    issuer: str, tmp_path: Path
) -> None:
    with whoami_backend(tmp_path, "service", issuer) as (backend_url, _):
        auth = {
            "type": "oauth_client_credentials",
            "token_url": f"{issuer}/token",
            "client_id": SERVICE[0],
            "client_secret": {"env": "VMCP_TEST_SERVICE_SECRET"},
            "resource": backend_url,
            "scopes": ["mcp"],
        }
        entry = {"name": "service", "transport": "streamable-http", "url": backend_url, "auth": auth}
        config = write_config(tmp_path, {"backends": [entry]})
        with running_gateway(config, env={"VMCP_TEST_SERVICE_SECRET": SERVICE[1]}) as gateway:
            async with Client(streamable_http_client(gateway.url)) as client:
                result = await client.call_tool("service_whoami", {})
            assert not result.is_error, result
            assert result.structured_content == {"sub": SERVICE[0], "aud": backend_url, "client_id": SERVICE[0]}
            assert SERVICE[1] not in gateway.output() and quote_plus(SERVICE[1]) not in gateway.output()


async def test_opaque_tokens_are_introspected_with_such_a_secret_given_with_a_trailing_newline(
    issuer: str, tmp_path: Path
) -> None:
    # The newline a Kubernetes Secret made `--from-file` ends in: dropped, as it is from a backend's secret.
    env = {"VMCP_TEST_INTROSPECTION_SECRET": INTROSPECTOR[1] + "\n"}
    with running_gateway(write_config(tmp_path, introspecting(issuer)), env=env) as gateway:
        token = opaque_token(issuer, gateway.url)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(streamable_http_client(gateway.url, http_client=http)) as carol:
            assert "notes_save_note" in {tool.name for tool in (await carol.list_tools()).tools}
        assert INTROSPECTOR[1] not in gateway.output() and token not in gateway.output()


def test_a_wrong_introspection_secret_is_a_503_for_callers_and_the_servers_reason_for_the_operator(
    issuer: str, tmp_path: Path
) -> None:
    env = {"VMCP_TEST_INTROSPECTION_SECRET": WRONG_SECRET}
    with running_gateway(write_config(tmp_path, introspecting(issuer)), env=env) as gateway:
        token = opaque_token(issuer, gateway.url)
        # Twice: the second is asked again, not refused from memory as a token the server does not know.
        for _ in range(2):
            refused = post_initialize(gateway.url, token)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            assert "the gateway's own credentials" in refused.json()["error_description"]
        log = gateway.output()
        said = [line for line in log.splitlines() if "token introspection answered HTTP 401" in line]
        assert said, log
        assert f"client '{INTROSPECTOR[0]}'" in said[0] and "invalid_client" in said[0], said[0]
        assert "$VMCP_TEST_INTROSPECTION_SECRET" in said[0]
        for shown in (WRONG_SECRET, quote_plus(WRONG_SECRET), token):
            assert shown not in log
