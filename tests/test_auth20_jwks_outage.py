"""The issuer's keys while the issuer is away: a real gateway in front of a real OpenID provider (oidc-provider,
tests/oidc/issuer.mjs) that is not serving yet, or that the gateway names wrongly.

A token the gateway cannot judge (no signing key known at all) is a 503 the client retries, never a 401 that
tells it its token is bad; once the issuer serves, tokens are accepted within seconds, not after
`jwks_refresh_interval`. The client never learns the issuer's internal addresses; the operator's log says
what went wrong.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import (
    ROOT,
    demo_backend,
    free_port,
    running_gateway,
    running_issuer,
    write_config,
)
from tests.test_auth_e2e import INITIALIZE, private_jwk

pytestmark = pytest.mark.slow

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def oidc_issuer(directory: Path, port: int, key: rsa.RSAPrivateKey) -> AbstractContextManager[str]:
    clients = [{"client_id": "alice", "client_secret": "alice-secret-0123456789abcdef", "groups": ["dev"]}]
    return running_issuer(directory, {"port": port, "jwks": {"keys": [private_jwk(key, "k1")]}, "clients": clients})


def gateway_config(directory: Path, issuer: str) -> Path:
    oauth: dict[str, Any] = {"issuer": issuer}
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
    return write_config(directory, config)


def signed(key: rsa.RSAPrivateKey, issuer: str, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": "alice", "aud": audience, "iat": now, "exp": now + 300, "groups": ["dev"]}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def initialize(url: str, token: str) -> httpx2.Response:
    return httpx2.post(url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=30)


def test_tokens_wait_with_503_while_the_issuer_is_down_and_are_accepted_soon_after_it_serves(
    tmp_path: Path,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    with running_gateway(gateway_config(tmp_path, issuer)) as gateway:
        token = signed(key, issuer, gateway.url)
        for attempt in range(3):  # the first fetch fails, and so does every token until a key is known
            refused = initialize(gateway.url, token)
            assert refused.status_code == 503, (attempt, refused.status_code, refused.text)
            assert refused.json()["error"] == "temporarily_unavailable"
            assert str(port) not in refused.text  # the issuer's address is the operator's business
        with oidc_issuer(tmp_path, port, key):
            deadline = time.monotonic() + 20  # NO_KEYS_RETRY is 5 s; jwks_refresh_interval (60 s) would fail
            while (answer := initialize(gateway.url, token)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert answer.status_code == 200, answer.text
        assert f"{issuer}/.well-known/" in gateway.output()  # the log says what failed, and where


def test_an_issuer_named_with_a_trailing_slash_it_does_not_have_is_explained_in_the_log(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with (
        oidc_issuer(tmp_path, free_port(), key) as issuer,
        running_gateway(gateway_config(tmp_path, issuer + "/")) as gateway,
    ):
        answer = initialize(gateway.url, signed(key, issuer, gateway.url))
        assert answer.status_code == 503, answer.text
        deadline = time.monotonic() + 30
        while f"its `issuer` is '{issuer}', not '{issuer}/'" not in gateway.output():
            assert time.monotonic() < deadline, gateway.output()[-2000:]
            time.sleep(0.2)


def test_an_issuer_url_without_its_scheme_is_refused_at_load(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, "login.example.com/realms/x")
    vmcp = ROOT / ".venv" / "bin" / "vmcp"
    result = subprocess.run([str(vmcp), "validate", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "auth.incoming.oauth.issuer: expected an absolute http(s) URL" in result.stdout + result.stderr


def test_a_jwks_url_with_credentials_is_logged_without_them(tmp_path: Path) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing serves there: every fetch fails and is logged
    jwks_url = f"http://keys:s3cr3t-pw@127.0.0.1:{free_port()}/jwks?api_key=k9k9k9"
    oauth = {"issuer": issuer, "jwks_url": jwks_url}
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        token = signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), issuer, gateway.url)
        assert initialize(gateway.url, token).status_code == 503
        deadline = time.monotonic() + 30
        while "fetching the issuer's keys" not in gateway.output():
            assert time.monotonic() < deadline, gateway.output()[-2000:]
            time.sleep(0.2)
        assert "s3cr3t-pw" not in gateway.output() and "k9k9k9" not in gateway.output()
