"""What per-backend credentials cost a call (issue 15): a cached exchanged token vs `none`, and a cache miss.

One real gateway process over two copies of examples/backends/whoami_server.py started with `--open` (they
check nothing, so the backend's own JWT verification is not in the figure), one with `auth: none` and one with
`auth: token_exchange` against the real test issuer (tests/oidc/issuer.mjs). The same client calls both
tools, interleaved, so both series share the machine's noise:

- added p50 of a call with a cached exchanged token: p50(token_exchange) - p50(none);
- cache miss: the first call of a caller new to the gateway (an exchange at the token endpoint and a new
  backend session of its own) minus a new caller's first call to the `none` backend;
- the gateway-side work of a cached call in process (`BackendAuth.prepare` + the auth flow), for scale.

    PYTHONPATH=. .venv/bin/python bench/credentials.py [--calls 300] [--callers 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port, running_gateway, serving_mcp, write_config  # noqa: E402
from tests.test_backend_credentials import SECRETS, issuer_process, token_for  # noqa: E402

WHOAMI = ROOT / "examples" / "backends" / "whoami_server.py"


@contextmanager
def open_backend() -> Iterator[str]:
    port = free_port()
    with serving_mcp([sys.executable, str(WHOAMI), "--open", "--port", str(port)], port) as url:
        yield url


def client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(url, http_client=http))  # type: ignore[arg-type]


async def timed_call(session: Client, tool: str) -> float:
    started = time.perf_counter()
    result = await session.call_tool(tool, {})
    assert not result.is_error, result
    return (time.perf_counter() - started) * 1000


async def steady(url: str, token: str, calls: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    exchanged: list[float] = []
    async with client(url, token) as session:
        for tool in ("plain_whoami", "exchanged_whoami"):  # warm: both sessions open, the token cached
            await timed_call(session, tool)
        for i in range(calls):
            order = [("plain_whoami", plain), ("exchanged_whoami", exchanged)]
            for tool, series in order if i % 2 else reversed(order):
                series.append(await timed_call(session, tool))
    return plain, exchanged


async def first_calls(url: str, tokens: list[str], tool: str) -> list[float]:
    firsts = []
    for token in tokens:
        async with client(url, token) as session:
            firsts.append(await timed_call(session, tool))
    return firsts


def in_process(calls: int) -> float:
    """µs per cached call of the gateway-side credential work: prepare() and one auth flow."""
    from vmcp_opt.backends.credentials import BackendCredentials, SubjectToken
    from vmcp_opt.backends.token_client import Token
    from vmcp_opt.config import BackendConfig

    config = BackendConfig.model_validate(
        {
            "name": "b",
            "transport": "streamable-http",
            "url": "http://127.0.0.1:1/mcp",
            "auth": {
                "type": "token_exchange",
                "token_url": "http://127.0.0.1:1/token",
                "client_id": "g",
                "client_secret": {"env": "UNUSED"},
                "audience": "a",
            },
        }
    )
    credentials = BackendCredentials(config, Path("."))
    subject = SubjectToken("credential:x", "t" * 800)
    credentials.cache._tokens[subject.key] = Token("e" * 800, time.monotonic() + 3600, time.monotonic() + 3000)
    auth = credentials.for_caller(subject)
    request = httpx2.Request("POST", "http://127.0.0.1:1/mcp")
    response = httpx2.Response(200)

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await auth.prepare()
            flow = auth.async_auth_flow(request)
            await flow.__anext__()
            with suppress(StopAsyncIteration):
                await flow.asend(response)
        return (time.perf_counter() - started) / calls * 1e6

    return anyio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--callers", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        issuer_process(Path(tmp), exchange_ttl=3600) as issuer,
        open_backend() as plain_url,
        open_backend() as exchanged_url,
    ):
        exchange = {
            "type": "token_exchange",
            "token_url": f"{issuer}/token",
            "client_id": "gateway",
            "client_secret": {"env": "VMCP_BENCH_GATEWAY_SECRET"},
            "audience": exchanged_url,
            "resource": exchanged_url,
        }
        config = {
            "backends": [
                {"name": "plain", "transport": "streamable-http", "url": plain_url},
                {"name": "exchanged", "transport": "streamable-http", "url": exchanged_url, "auth": exchange},
            ],
            "optimizer": {"enabled": False},
            "auth": {"incoming": {"mode": "oauth", "oauth": {"issuer": issuer}}},
        }
        env = {"VMCP_BENCH_GATEWAY_SECRET": SECRETS["gateway"]}
        with running_gateway(write_config(Path(tmp), config), "--log-level", "warning", env=env) as gateway:
            token = token_for(issuer, "alice", gateway.url)
            plain, exchanged = anyio.run(steady, gateway.url, token, args.calls)
            fresh = [token_for(issuer, "bob", gateway.url) for _ in range(2 * args.callers)]
            plain_first = anyio.run(first_calls, gateway.url, fresh[: args.callers], "plain_whoami")
            exchanged_first = anyio.run(first_calls, gateway.url, fresh[args.callers :], "exchanged_whoami")
    p50_plain, p50_exchanged = statistics.median(plain), statistics.median(exchanged)
    print(f"calls: {args.calls} each, interleaved, one client (2026-07-28, HTTP, oauth incoming)")
    print(f"  none            p50 {p50_plain:7.3f} ms  p90 {statistics.quantiles(plain, n=10)[-1]:7.3f} ms")
    print(f"  token_exchange  p50 {p50_exchanged:7.3f} ms  p90 {statistics.quantiles(exchanged, n=10)[-1]:7.3f} ms")
    print(f"  added p50 (cached exchanged token): {p50_exchanged - p50_plain:+.3f} ms")
    first_plain, first_exchanged = statistics.median(plain_first), statistics.median(exchanged_first)
    print(f"first call of a new caller ({args.callers} callers each, median):")
    print(f"  none {first_plain:.1f} ms, token_exchange {first_exchanged:.1f} ms")
    print(f"  cache miss (exchange + the caller's own backend session): {first_exchanged - first_plain:+.1f} ms")
    print(f"gateway-side credential work of a cached call, in process: {in_process(20000):.2f} µs")
    os.environ.pop("VMCP_BENCH_GATEWAY_SECRET", None)


if __name__ == "__main__":
    main()
