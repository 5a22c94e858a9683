"""One client address flooding made-up opaque tokens is refused (429, Retry-After) past its own introspection
budget, and leaves the total budget to other addresses: a second address's valid token is introspected and
served. Past the total budget the refusal is a 503, also with Retry-After.

The rates are 0.001 a second, so a bucket refills one request in 1000 s: within a test its state is exactly the
burst minus what was spent. Retry-After is then 1000 s less the time since the bucket was emptied, so it is
checked against the test's own elapsed time, never against a guess.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import RAW_INITIALIZE, demo_backend, running_gateway, write_config
from tests.test_leaks22_introspection import ISSUER, RESOURCE, SECRET, VALID, bearer, counting_issuer

pytestmark = pytest.mark.slow

RATE = 0.001  # a second: 1000 s to refill one request
TOTAL_BURST, ADDRESS_BURST = 3, 2
ENV = {"VMCP_TEST_SECRET": SECRET}


def gateway_config(
    directory: Path, issuer: str, server: dict[str, Any] | None = None, per_address_burst: int = ADDRESS_BURST
) -> Path:
    oauth = {
        "issuer": ISSUER,
        "resource": RESOURCE,
        "jwks_url": f"{issuer}/keys",
        "introspection_url": f"{issuer}/introspect",
        "client_id": "gateway",
        "client_secret_env": "VMCP_TEST_SECRET",
        "introspection_rate": RATE,
        "introspection_burst": TOTAL_BURST,
        "introspection_rate_per_address": RATE,
        "introspection_burst_per_address": per_address_burst,
    }
    config: dict[str, Any] = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "oauth", "oauth": oauth}},
    }
    if server is not None:
        config["server"] = server
    return write_config(directory, config)


@contextmanager
def client_from(address: str) -> Iterator[httpx2.Client]:
    """An HTTP client whose connections come from `address` (any of 127.0.0.0/8 reaches the loopback)."""
    with httpx2.Client(timeout=30, transport=httpx2.HTTPTransport(local_address=address)) as client:
        yield client


def made_up_token() -> str:
    return "made-up-" + secrets.token_urlsafe(24)


def assert_retry_later(answer: httpx2.Response, status: int, setting: str, since: float) -> None:
    """Refused with `status` naming `setting`, retryable after the bucket's refill: 1000 s less the time since
    it was emptied (at most `since`'s elapsed time)."""
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == "temporarily_unavailable", answer.text
    assert setting in answer.json()["error_description"], answer.text
    elapsed = time.monotonic() - since
    assert 1000 - elapsed - 1 <= int(answer.headers["retry-after"]) <= 1000, (answer.headers, elapsed)


def test_one_address_flooding_made_up_tokens_gets_429_and_another_address_is_still_introspected(
    tmp_path: Path,
) -> None:
    with (
        counting_issuer() as (issuer, asked),
        running_gateway(gateway_config(tmp_path, issuer), env=ENV) as gateway,
        client_from("127.0.0.1") as flooder,
        client_from("127.0.0.2") as user,
        client_from("127.0.0.3") as latecomer,
    ):
        started = time.monotonic()
        for _ in range(ADDRESS_BURST):  # the flooder's own burst: asked about, and unknown
            answer = flooder.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()))
            assert answer.status_code == 401, answer.text
        flood = flooder.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()))
        assert_retry_later(flood, 429, "introspection_rate_per_address)", started)
        assert len(asked) == ADDRESS_BURST  # refused without asking the authorization server

        served = user.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(VALID))
        assert served.status_code == 200, served.text
        assert asked[-1] == VALID

        # The total budget is spent now (2 + 1 of 3): a third address's new token waits, with a 503.
        over_total = latecomer.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()))
        assert_retry_later(over_total, 503, "oauth.introspection_rate)", started)
        assert len(asked) == TOTAL_BURST
        # A token the gateway holds an answer for is not held back by the flood, from any address.
        again = flooder.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(VALID))
        assert again.status_code == 200, again.text
        assert "Traceback" not in gateway.output()


def test_the_address_behind_a_trusted_proxy_is_the_one_bounded(tmp_path: Path) -> None:
    """Behind `server.trusted_proxies` the client address is X-Forwarded-For's, as for the session and
    connection bounds: two clients behind one proxy have budgets of their own."""
    server = {"trusted_proxies": ["127.0.0.1/32"]}
    with (
        counting_issuer() as (issuer, asked),
        running_gateway(gateway_config(tmp_path, issuer, server), env=ENV) as gateway,
        httpx2.Client(timeout=30) as proxy,
    ):
        flooder, user = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "203.0.113.6"}
        started = time.monotonic()
        for _ in range(ADDRESS_BURST):
            answer = proxy.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()) | flooder)
            assert answer.status_code == 401, answer.text
        flood = proxy.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()) | flooder)
        assert_retry_later(flood, 429, "introspection_rate_per_address)", started)

        served = proxy.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(VALID) | user)
        assert served.status_code == 200, served.text
        assert asked[-1] == VALID and len(asked) == ADDRESS_BURST + 1


def test_the_total_budget_refuses_with_503_and_retry_after(tmp_path: Path) -> None:
    """One address whose own budget is larger than the total: past the total, its 503, saying when to retry."""
    with (
        counting_issuer() as (issuer, asked),
        running_gateway(gateway_config(tmp_path, issuer, per_address_burst=TOTAL_BURST + 1), env=ENV) as gateway,
        httpx2.Client(timeout=30) as client,
    ):
        started = time.monotonic()
        for _ in range(TOTAL_BURST):
            answer = client.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()))
            assert answer.status_code == 401, answer.text
        over_total = client.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(made_up_token()))
        assert_retry_later(over_total, 503, "oauth.introspection_rate)", started)
        assert len(asked) == TOTAL_BURST
