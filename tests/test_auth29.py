"""Five authentication defects of review 29, each over real processes: real gateways, with as issuer a loopback HTTP
server in this process whose JWKS the test changes (tests/test_jwks23_refresh_deadline.py `GatedIssuer`, its gate
open), or one answering introspection requests with an error that echoes what it was sent.

1. A token verified before its signing key left the issuer's JWKS is verified again, and refused (it was accepted
   until its own `exp`); a token whose key stayed is still served from memory.
2. A token whose key id is not held, within `jwks_refresh_interval` of the last fetch (a key just rotated in, or
   anyone's made-up key id that spent the refresh), is a 503 with `Retry-After`, not a 401, and costs the issuer
   no fetch; a 503 for keys that cannot be fetched at all says `Retry-After` too.
3. A `sub`, `groups` or `client_id` claim with a lone UTF-16 surrogate is a 401 naming the claim (`tools/call`
   crashed with UnicodeEncodeError); a subject of well-formed non-ASCII text still calls tools.
4. An API keys file edited in place keeping its size and mtime (`touch -r`, `cp -p`) is re-read.
5. An introspection error echoing the caller's token and the gateway's Basic credentials is logged masked.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import Gateway, bearer_client, demo_backend, running_gateway, write_config
from tests.test_jwks23_refresh_deadline import (
    JWKS,
    POLL_DEADLINE,
    GatedIssuer,
    gated_issuer,
    gateway_config,
    initialize,
    public,
    signed,
)
from vmcp_opt.auth.api_keys import new_key

pytestmark = pytest.mark.slow

FOREIGN_KEY = "the token's signing key is not one of the issuer's"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@contextmanager
def open_issuer(*keys: dict[str, Any]) -> Iterator[GatedIssuer]:
    with gated_issuer() as issuer:
        issuer.keys = list(keys)
        issuer.gate.set()
        yield issuer


def refusal(answer: httpx2.Response) -> tuple[int, str, str]:
    """The status, OAuth error and description of a refused request (blank for one served)."""
    if answer.status_code < 400:
        return answer.status_code, "", ""
    body = answer.json()
    return answer.status_code, body["error"], body["error_description"]


def assert_retry_later(answer: httpx2.Response, most: float) -> None:
    """A 503 the client is told to retry, after whole seconds between 1 and `most`."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "temporarily_unavailable", answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= most, answer.headers


def served_once_refreshed(url: str, token: str) -> httpx2.Response:
    """The first answer to `token` that is a 200 (a token whose key is new waits for the next refresh)."""
    deadline = time.monotonic() + POLL_DEADLINE
    while (answer := initialize(url, token)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


# --- 1. a key removed from the JWKS ------------------------------------------------------------------------------


def test_a_remembered_token_is_refused_once_its_key_left_the_jwks(tmp_path: Path) -> None:
    retired, kept, rotated_in = rsa_key(), rsa_key(), rsa_key()
    with open_issuer(public(retired, "k1"), public(kept, "k3")) as issuer:
        # The keys are fetched again for any token a second after the last fetch (jwks_max_age).
        config = gateway_config(tmp_path, issuer.base, jwks_max_age=1, jwks_refresh_interval=60)
        with running_gateway(config) as gateway:
            old = signed(retired, "k1", issuer.base, gateway.url)
            steady = signed(kept, "k3", issuer.base, gateway.url)
            assert initialize(gateway.url, old).status_code == 200  # verified, and remembered
            assert initialize(gateway.url, steady).status_code == 200
            fetched = issuer.asked[JWKS]

            issuer.keys = [public(kept, "k3"), public(rotated_in, "k2")]  # k1 retired (perhaps compromised)
            fresh = signed(rotated_in, "k2", issuer.base, gateway.url)
            assert served_once_refreshed(gateway.url, fresh).status_code == 200
            assert issuer.asked[JWKS] > fetched  # the key set without k1 is the one held now

            assert refusal(initialize(gateway.url, old)) == (401, "invalid_token", FOREIGN_KEY)
            again = signed(retired, "k1", issuer.base, gateway.url)  # a new token from the retired key
            assert refusal(initialize(gateway.url, again)) == (401, "invalid_token", FOREIGN_KEY)
            assert initialize(gateway.url, steady).status_code == 200  # its key is still the issuer's


# --- 2. a key id not held while a refresh is throttled -----------------------------------------------------------


def test_a_key_id_not_held_within_the_refresh_interval_is_a_503_with_retry_after(tmp_path: Path) -> None:
    k1, k2 = rsa_key(), rsa_key()
    with open_issuer(public(k1, "k1")) as issuer:
        config = gateway_config(tmp_path, issuer.base, jwks_refresh_interval=60)
        with running_gateway(config) as gateway:
            assert initialize(gateway.url, signed(k1, "k1", issuer.base, gateway.url)).status_code == 200
            assert issuer.asked[JWKS] == 1
            # Anyone's made-up key id, just after the fetch: not judged (it was a 401, and spent the interval).
            assert_retry_later(initialize(gateway.url, signed(k1, "made-up", issuer.base, gateway.url)), 60)
            issuer.keys = [public(k1, "k1"), public(k2, "k2")]  # the issuer rotates k2 in and signs with it
            for _ in range(5):  # the real client retries: told so each time, and the issuer is not asked again
                assert_retry_later(initialize(gateway.url, signed(k2, "k2", issuer.base, gateway.url)), 60)
            assert issuer.asked[JWKS] == 1


def test_a_503_for_keys_that_cannot_be_fetched_says_when_to_retry(echoing_gateway: Gateway) -> None:
    """The issuer answers no metadata (only introspection requests): no signing key can be had."""
    answer = initialize(echoing_gateway.url, signed(rsa_key(), "k1", "http://127.0.0.1:9", echoing_gateway.url))
    assert_retry_later(answer, 5)  # keys are asked for again at most every 5 s while none is held
    assert answer.json()["error_description"].startswith(
        "cannot verify tokens now: the authorization server's signing keys cannot be fetched"
    )


# --- 3. claims that are not valid Unicode text -------------------------------------------------------------------


def claims_token(key: rsa.RSAPrivateKey, issuer: str, audience: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": issuer, "sub": "alice", "aud": audience, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})  # JSON escapes: "\ud800"


async def whoami(url: str, token: str) -> dict[str, Any]:
    async with bearer_client(url, token) as client:
        result = await client.call_tool("notes_whoami", {})
    assert not result.is_error, result
    return dict(result.structured_content or {})


SURROGATES = {"sub": "x\ud800y", "groups": ["dev", "d\udc00"], "client_id": "c\ud800"}


def test_a_claim_with_a_lone_surrogate_is_refused_naming_it(tmp_path: Path) -> None:
    key = rsa_key()
    (tmp_path / "policy.cedar").write_text("permit(principal, action, resource);\n")
    with open_issuer(public(key, "k1")) as issuer:
        incoming = {"mode": "oauth", "oauth": {"issuer": issuer.base}}
        auth = {"incoming": incoming, "authorization": {"policies": "policy.cedar"}}
        config = write_config(tmp_path, {"backends": [demo_backend("notes")], "auth": auth})
        with running_gateway(config) as gateway:
            for claim, value in SURROGATES.items():
                answer = initialize(gateway.url, claims_token(key, issuer.base, gateway.url, **{claim: value}))
                assert refusal(answer) == (
                    401,
                    "invalid_token",
                    f"the token has a `{claim}` claim that is not valid Unicode text (a lone UTF-16 surrogate)",
                ), claim
            # Well-formed text beyond ASCII (an astral character is a surrogate pair in JSON) is a caller as any.
            fine = claims_token(key, issuer.base, gateway.url, sub="zoë 😀", groups=["dév"])
            assert anyio.run(whoami, gateway.url, fine) is not None
            assert "Traceback" not in gateway.output() and "UnicodeEncodeError" not in gateway.output()


# --- 4. an API keys file edited in place keeping its size and mtime ----------------------------------------------


def test_an_api_keys_file_edited_keeping_size_and_mtime_is_reread(tmp_path: Path) -> None:
    (alice, alice_hash), (bob, bob_hash) = new_key(), new_key()
    keys_file = tmp_path / "keys.json"

    def write(entries: list[dict[str, str]]) -> None:
        keys_file.write_text(json.dumps({"keys": entries}))

    write([{"sha256": alice_hash, "subject": "alice"}, {"sha256": bob_hash, "subject": "bobby"}])
    incoming = {"mode": "api_keys", "api_keys": {"file": "keys.json"}}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "auth": {"incoming": incoming}})
    with running_gateway(config) as gateway:
        assert initialize(gateway.url, bob).status_code == 200
        before = os.stat(keys_file)
        # Bob revoked: his digest replaced by a same-length one, the mtime put back (`touch -r`, `cp -p`, rsync -t).
        write([{"sha256": alice_hash, "subject": "alice"}, {"sha256": "0" * 64, "subject": "bobby"}])
        os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(keys_file)
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        assert refusal(initialize(gateway.url, bob)) == (401, "invalid_token", "unknown or revoked API key")
        assert initialize(gateway.url, alice).status_code == 200


# --- 5. an introspection error echoing what the gateway sent -----------------------------------------------------

CLIENT_ID = "gw"
SECRET = "Intro+Secret/0029-qq"  # `+` and `/`: its form-encoded form differs from it
OPAQUE = "opaque+Token/0029-zzzz"


@contextmanager
def echoing_introspection() -> Iterator[str]:
    """An introspection endpoint answering every request with an OAuth error that quotes the token and the
    Authorization header it was sent (401 `invalid_client` for a token holding "401", else 500)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            token = parse_qs(form).get("token", [""])[0]
            status = 401 if "401" in token else 500
            said = f"no token {token} (raw {form}) for client auth {self.headers.get('Authorization')}"
            body = json.dumps(
                {"error": "invalid_client" if status == 401 else "server_error", "error_description": said}
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def echoing_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose issuer is the echoing introspection endpoint (which answers no metadata, so no key)."""
    with echoing_introspection() as base:
        oauth = {
            "issuer": base,
            "introspection_url": f"{base}/introspect",
            "client_id": CLIENT_ID,
            "client_secret_env": "VMCP_TEST_INTROSPECTION_SECRET",
            "timeout": 2,
        }
        config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
        directory = tmp_path_factory.mktemp("echoing")
        with running_gateway(
            write_config(directory, config), env={"VMCP_TEST_INTROSPECTION_SECRET": SECRET}
        ) as gateway:
            yield gateway


def test_an_introspection_error_echoing_the_token_and_basic_credentials_is_logged_masked(
    echoing_gateway: Gateway,
) -> None:
    for token in (OPAQUE, OPAQUE + "-401"):
        assert initialize(echoing_gateway.url, token).status_code == 503
    output = _logged(echoing_gateway)
    assert "token introspection answered HTTP 500: server_error: no token ***" in output
    assert "token introspection answered HTTP 401 to the gateway's client 'gw': invalid_client" in output
    basic = base64.b64encode(b"gw:Intro%2BSecret%2F0029-qq").decode()
    for shown in (OPAQUE, "opaque%2BToken%2F0029-zzzz", SECRET, "Intro%2BSecret%2F0029-qq", basic):
        assert shown not in output, shown


def _logged(gateway: Gateway) -> str:
    """The gateway's log once both refusals are in it (a log line may trail its answer)."""
    deadline = time.monotonic() + POLL_DEADLINE
    while (output := gateway.output()).count("token introspection answered HTTP") < 2:
        assert time.monotonic() < deadline, output[-2000:]
        time.sleep(0.05)
    return output
