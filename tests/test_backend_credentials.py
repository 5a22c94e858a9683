"""Per-backend credentials end to end (`backends[].auth`): a real OpenID provider, real protected backends, a real
gateway, real MCP clients.

The provider is `oidc-provider` run by `tests/oidc/issuer.mjs`, with a client-credentials client (`gateway`) that
may also use the RFC 8693 token-exchange grant the script registers. Each backend is
`examples/backends/whoami_server.py`: it checks every request's bearer token against the provider's JWKS and its
own audience (or an API key), records what it saw (never the token itself), and says who called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    ROOT,
    Gateway,
    free_port,
    running_gateway,
    running_issuer,
    stop_process,
    wait_http,
    write_config,
)
from tests.test_auth_e2e import private_jwk
from vmcp_opt.config import ConfigError, load_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

WHOAMI = ROOT / "examples" / "backends" / "whoami_server.py"
SECRETS = {
    "alice": "alice-secret-0123456789abcdef",
    "bob": "bob-secret-0123456789abcdef",
    "gateway": "gateway-secret-0123456789abcdef",
}
API_KEY = "keyed-api-key-0123456789abcdef"
WRONG_KEY = "wrong-api-key-0123456789abcdef"
EXCHANGE_TTL = 6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def issuer_process(directory: Path, exchange_ttl: int = EXCHANGE_TTL) -> Iterator[str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clients = [
        {"client_id": name, "client_secret": secret, "exchange": name == "gateway"} for name, secret in SECRETS.items()
    ]
    issued = directory / "issued.txt"
    issued.touch()
    settings = {
        "port": free_port(),
        "jwks": {"keys": [private_jwk(key, "k1")]},
        "clients": clients,
        "exchange_ttl": exchange_ttl,
        "issued": str(issued),
    }
    with running_issuer(directory, settings) as url:
        yield url


@contextmanager
def whoami_backend(directory: Path, name: str, issuer: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    seen = directory / f"seen-{name}.jsonl"
    seen.touch()
    command = [sys.executable, str(WHOAMI), "--port", str(port), "--issuer", issuer, "--audience", url]
    command += ["--seen", str(seen), "--api-key-env", "WHOAMI_API_KEY"]
    env = {**os.environ, "WHOAMI_API_KEY": API_KEY}
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_http(url, expect=(401,), proc=proc)
        yield url, seen
    finally:
        stop_process(proc)


def token_for(issuer: str, client: str, resource: str) -> str:
    response = httpx2.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "resource": resource, "scope": "mcp"},
        auth=(client, SECRETS[client]),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def seen(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class World:
    def __init__(self, directory: Path, issuer: str, gateway: Gateway, backends: dict[str, tuple[str, Path]]) -> None:
        self.directory = directory
        self.issuer = issuer
        self.gateway = gateway
        self.backends = backends
        self.tokens: list[str] = []

    def token(self, client: str) -> str:
        token = token_for(self.issuer, client, self.gateway.url)
        self.tokens.append(token)
        return token

    def client(self, client: str, mode: str = "auto", headers: dict[str, str] | None = None) -> Client:
        headers = {"Authorization": f"Bearer {self.token(client)}", **(headers or {})}
        http = httpx2.AsyncClient(headers=headers, timeout=60)
        return Client(streamable_http_client(self.gateway.url, http_client=http), mode=mode)  # type: ignore[arg-type]


async def whoami(client: Client, backend: str) -> dict[str, Any]:
    result = await client.call_tool(f"{backend}_whoami", {})
    assert not result.is_error, result
    assert result.structured_content is not None
    return result.structured_content


def gateway_config(issuer: str, backends: dict[str, tuple[str, Path]], wrong_key: Path) -> dict:
    def oauth(kind: str, url: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "client_id": "gateway",
            "client_secret": {"env": "VMCP_TEST_GATEWAY_SECRET"},
            "resource": url,
            "scopes": ["mcp"],
            **extra,
        }

    def exchange(name: str, audience_of: str, **extra: Any) -> dict[str, Any]:
        audience = backends[audience_of][0]
        return oauth("token_exchange", backends[name][0], token_url=f"{issuer}/token", audience=audience, **extra)

    def backend(name: str, auth: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "transport": "streamable-http", "url": backends[name][0], "auth": auth}

    return {
        "health": {"interval": 1},
        "backends": [
            backend(
                "keyed",
                {
                    "type": "header",
                    "headers": {"X-Api-Key": {"env": "VMCP_TEST_API_KEY"}},
                    "passthrough_headers": ["X-Request-Id"],
                },
            ),
            backend("service", oauth("oauth_client_credentials", backends["service"][0], issuer=issuer)),
            backend("alpha", exchange("alpha", "alpha", refresh_before=2)),
            backend("beta", exchange("beta", "beta")),
            backend("wrongkey", {"type": "header", "headers": {"X-Api-Key": {"file": str(wrong_key)}}}),
            # Exchanges for beta's audience: the backend refuses every caller's token (its own listing is fine).
            backend("misaimed", exchange("misaimed", "beta")),
        ],
        "auth": {
            "incoming": {
                "mode": "oauth",
                "oauth": {"issuer": issuer},
            }
        },
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("credentials")
    names = ("keyed", "service", "alpha", "beta", "wrongkey", "misaimed")
    with issuer_process(directory) as issuer:
        backends: dict[str, tuple[str, Path]] = {}
        managers = [whoami_backend(directory, name, issuer) for name in names]
        try:
            for name, manager in zip(names, managers, strict=True):
                backends[name] = manager.__enter__()
            wrong_key = directory / "wrong.key"
            wrong_key.write_text(WRONG_KEY + "\n")
            config = write_config(directory, gateway_config(issuer, backends, wrong_key))
            # The key ends in a newline, as a Kubernetes Secret made `--from-file` gives it: stripped, as a file's is.
            env = {"VMCP_TEST_GATEWAY_SECRET": SECRETS["gateway"], "VMCP_TEST_API_KEY": API_KEY + "\n"}
            with running_gateway(config, env=env) as gateway:
                yield World(directory, issuer, gateway, backends)
        finally:
            for manager in reversed(managers[: len(backends)]):
                manager.__exit__(None, None, None)


# --- validation ------------------------------------------------------------------------------------


def test_a_literal_secret_in_backend_auth_is_refused_naming_the_field(tmp_path: Path) -> None:
    backend = {"name": "x", "transport": "streamable-http", "url": "http://127.0.0.1:1/mcp"}
    literal = {**backend, "auth": {"type": "header", "headers": {"X-Api-Key": "sk-live-literal"}}}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"backends": [literal]}))
    assert any(p.startswith("backends[0].auth.headers") and "literal secret" in p for p in caught.value.problems)
    assert "sk-live-literal" not in str(caught.value)
    forwarded = {**backend, "auth": {"passthrough_headers": ["X-Trace", "Authorization"]}}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"backends": [forwarded]}))
    assert "never forwarded: Authorization" in str(caught.value)
    unset = {**backend, "auth": {"type": "header", "headers": {"X-Api-Key": {"env": "VMCP_TEST_SURELY_UNSET"}}}}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"backends": [unset]}))
    assert "backends[0].auth.headers.X-Api-Key: environment variable VMCP_TEST_SURELY_UNSET is not set" in str(
        caught.value
    )


def test_a_header_secret_holding_a_control_character_is_refused_naming_its_source_never_the_value(
    tmp_path: Path,
) -> None:
    # HTTP refuses such a header, and the HTTP library's error would print the value escaped (`b'…\\n…'`).
    (tmp_path / "nul.key").write_bytes(b"file-secret-0123456789\x00tail\n")
    backend = {"name": "x", "transport": "streamable-http", "url": "http://127.0.0.1:1/mcp"}
    headers = {"X-Api-Key": {"env": "VMCP_TEST_CTRL_KEY"}, "X-Other": {"file": "nul.key"}}
    config = write_config(tmp_path, {"backends": [{**backend, "auth": {"type": "header", "headers": headers}}]})
    env = {**os.environ, "VMCP_TEST_CTRL_KEY": "env-secret-0123456789\nX-Evil: 1\n"}
    validated = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], env=env, capture_output=True, text=True
    )
    assert validated.returncode == 2, validated.stdout + validated.stderr
    shown = validated.stdout + validated.stderr
    assert (
        "backends[0].auth.headers.X-Api-Key: environment variable VMCP_TEST_CTRL_KEY holds a control character "
        "(U+000A)" in shown
    )
    assert f"backends[0].auth.headers.X-Other: {tmp_path / 'nul.key'} holds a control character (U+0000)" in shown
    assert "secret-0123456789" not in shown and "X-Evil" not in shown and "tail" not in shown


# --- each strategy, end to end -----------------------------------------------------------------------


async def test_header_and_client_credentials_reach_their_backends(world: World) -> None:
    async with world.client("alice") as alice:
        assert (await whoami(alice, "keyed"))["sub"] == "api-key"
        service = await whoami(alice, "service")
        assert service["client_id"] == "gateway" and service["aud"] == world.backends["service"][0]
        await whoami(alice, "service")
    # One client-credentials token for all the service backend's requests (listing, health checks, calls).
    tokens = {r["token_sha256"] for r in seen(world.backends["service"][1]) if "token_sha256" in r}
    assert len(tokens) == 1


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_each_user_reaches_a_token_exchange_backend_as_themselves(world: World, mode: str) -> None:
    async with world.client("alice", mode) as alice, world.client("bob", mode) as bob:
        for _ in range(2):
            a, b = await whoami(alice, "alpha"), await whoami(bob, "alpha")
            assert a["sub"] == "alice" and b["sub"] == "bob"
            assert a["aud"] == world.backends["alpha"][0] and a["client_id"] == "gateway"
        assert (await whoami(bob, "beta"))["sub"] == "bob"


async def test_a_backend_never_receives_another_backends_credentials(world: World) -> None:
    async with world.client("alice") as alice:
        for name in ("keyed", "service", "alpha", "beta"):
            await whoami(alice, name)
    by_backend = {name: seen(path) for name, (_, path) in world.backends.items()}
    for name, records in by_backend.items():
        if name == "misaimed":
            continue  # configured to ask for beta's audience: it sees tokens for beta, and refuses them
        url = world.backends[name][0]
        assert records, name
        for record in records:
            assert record.get("aud") in (None, url), (name, record)  # every token it saw was minted for it
            if name not in ("keyed", "wrongkey"):
                assert "api_key_sha256" not in record, (name, record)
        others = {r.get("token_sha256") for n, rs in by_backend.items() if n != name for r in rs}
        assert not ({r.get("token_sha256") for r in records} - {None}) & others, name


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_only_allow_listed_client_headers_reach_only_their_backend(world: World, mode: str) -> None:
    marker = f"req-{mode}-42"
    extra = {"X-Request-Id": marker, "X-Other": "not-forwarded", "Cookie": "session=abc"}
    async with world.client("alice", mode, headers=extra) as alice:
        await whoami(alice, "keyed")
        await whoami(alice, "beta")
    keyed = [r["headers"] for r in seen(world.backends["keyed"][1])]
    assert any(h.get("x-request-id") == marker for h in keyed)
    for name, (_, path) in world.backends.items():
        for record in seen(path):
            assert "x-other" not in record["headers"] and "cookie" not in record["headers"], name
            if name != "keyed":
                assert "x-request-id" not in record["headers"], name


async def test_an_expired_exchanged_token_is_replaced(world: World) -> None:
    async with world.client("alice") as alice:
        await whoami(alice, "alpha")
        await anyio.sleep(EXCHANGE_TTL - 2 + 0.5)  # past expiry less `refresh_before`
        assert (await whoami(alice, "alpha"))["sub"] == "alice"
    alice_tokens = {r["token_sha256"] for r in seen(world.backends["alpha"][1]) if r.get("sub") == "alice"}
    assert len(alice_tokens) >= 2


async def test_a_backend_refusing_the_credentials_is_unauthenticated_not_unhealthy(world: World) -> None:
    ready = httpx2.get(f"{world.gateway.base}/readyz").json()
    wrong = next(b for b in ready["backends"] if b["name"] == "wrongkey")
    assert wrong["health"]["state"] == "unauthenticated" and wrong["refused"] == 401
    assert "backend refused the token" in (wrong["last_error"] or "")
    good = next(b for b in ready["backends"] if b["name"] == "keyed")
    assert good["state"] == "ready"


async def test_a_backend_refusing_a_callers_exchanged_token_is_a_clear_error(world: World) -> None:
    async with world.client("alice") as alice:
        refused = await alice.call_tool("misaimed_whoami", {})
        assert refused.is_error
        message = " ".join(getattr(part, "text", "") for part in refused.content)
        assert "backend 'misaimed': backend refused the token: HTTP 401" in message, message
        assert (await whoami(alice, "alpha"))["sub"] == "alice"
    ready = httpx2.get(f"{world.gateway.base}/readyz").json()
    misaimed = next(b for b in ready["backends"] if b["name"] == "misaimed")
    assert misaimed["state"] == "ready" and misaimed["health"]["state"] != "unauthenticated"  # one caller's


def test_vmcp_backends_shows_unauthenticated_and_no_secret(world: World) -> None:
    command = [sys.executable, "-m", "vmcp_opt", "backends", "-c", str(world.directory / "vmcp.yaml"), "--json"]
    env = {**os.environ, "VMCP_TEST_GATEWAY_SECRET": SECRETS["gateway"], "VMCP_TEST_API_KEY": API_KEY}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    states = {b["name"]: b["health"]["state"] for b in json.loads(done.stdout)}
    assert states["wrongkey"] == "unauthenticated"
    for secret in (*SECRETS.values(), API_KEY, WRONG_KEY):
        assert secret not in done.stdout + done.stderr


def test_no_secret_or_token_in_any_output(world: World) -> None:
    issued = (world.directory / "issued.txt").read_text().split()
    assert issued  # the exchanged tokens
    output = world.gateway.output() + "".join(p.read_text() for _, p in world.backends.values())
    for value in (*SECRETS.values(), API_KEY, WRONG_KEY, *world.tokens, *issued):
        assert value not in output


async def test_the_token_endpoint_down_is_a_clear_error_and_other_backends_keep_serving(tmp_path: Path) -> None:
    issuer_cm = issuer_process(tmp_path)
    issuer = issuer_cm.__enter__()
    try:
        with whoami_backend(tmp_path, "alpha", issuer) as alpha, whoami_backend(tmp_path, "keyed", issuer) as keyed:
            backends = {name: keyed for name in ("keyed", "service", "wrongkey", "misaimed")}
            backends |= {"alpha": alpha, "beta": alpha}
            (tmp_path / "wrong.key").write_text(WRONG_KEY)
            config = gateway_config(issuer, backends, tmp_path / "wrong.key")
            config["backends"] = [b for b in config["backends"] if b["name"] in ("alpha", "keyed")]
            # The key ends in a newline, as a Kubernetes Secret made `--from-file` gives it: stripped, as a file's is.
            env = {"VMCP_TEST_GATEWAY_SECRET": SECRETS["gateway"], "VMCP_TEST_API_KEY": API_KEY + "\n"}
            with running_gateway(write_config(tmp_path, config), env=env) as gateway:
                world = World(tmp_path, issuer, gateway, backends)
                async with world.client("alice") as alice:  # the gateway now holds the issuer's JWKS
                    assert (await whoami(alice, "alpha"))["sub"] == "alice"
                bob = world.client("bob")  # its token is issued before the provider goes away
                issuer_cm.__exit__(None, None, None)
                async with bob:
                    refused = await bob.call_tool("alpha_whoami", {})
                    assert refused.is_error
                    message = " ".join(getattr(part, "text", "") for part in refused.content)
                    assert "backend 'alpha'" in message and "token endpoint unreachable" in message, message
                    assert (await whoami(bob, "keyed"))["sub"] == "api-key"
                for value in (*SECRETS.values(), API_KEY, *world.tokens):
                    assert value not in gateway.output() and value not in message
    finally:
        issuer_cm.__exit__(None, None, None)
