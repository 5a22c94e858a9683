"""What authentication and authorization cost, each measured against itself switched off in the same run.

    .venv/bin/python bench/auth.py [--calls 300] [--tools 10000] [--queries 200]

1. Added p50 per request with authentication on vs off: the same tools/call through two `vmcp serve`
   processes in front of the same kind of backend, one anonymous and one an OAuth resource server (RS256
   tokens checked against a JWKS served locally), calls interleaved; and the verifier alone, in process
   (a token seen before vs a first-time signature check).
2. tools/list and find_tool at `--tools` tools with a Cedar policy vs none (the router and the optimizer in
   process, keyword ranking so the embedding model's threads stay out of the figures): steady state (each
   caller's view cached), plus the one-time cost of a caller's first view.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import mcp_types as types
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.metrics import percentile  # noqa: E402
from tests.support import counting_http_server, demo_backend, running_gateway, write_config  # noqa: E402
from vmcp_opt.auth import Caller, Identification  # noqa: E402
from vmcp_opt.auth.cedar import CedarPolicy  # noqa: E402
from vmcp_opt.auth.tokens import TokenVerifier  # noqa: E402
from vmcp_opt.config import ClaimNames, OAuthConfig, VmcpConfig  # noqa: E402
from vmcp_opt.optimizer.metatools import OptimizerFront  # noqa: E402
from vmcp_opt.optimizer.tool_records import provided_record  # noqa: E402
from vmcp_opt.routing import AllowAll, Exchange, ProvidedTool, Router, SessionChooser, ToolCall  # noqa: E402

console = Console()
ISSUER = "https://issuer.bench"
POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource) when { resource.read_only };
forbid(principal, action == Action::"call_tool", resource)
when { resource.destructive && !(principal in Group::"admin") };
"""


def row(table: Table, name: str, samples: list[float]) -> None:
    table.add_row(
        name, f"{percentile(samples, 50):.3f}", f"{percentile(samples, 95):.3f}", f"{statistics.mean(samples):.3f}"
    )


def new_table(title: str) -> Table:
    table = Table(title=title)
    for column in ("", "p50 ms", "p95 ms", "mean ms"):
        table.add_column(column, justify="right")
    return table


# --- 1. authentication on vs off -------------------------------------------------------------------------


async def interleaved(anonymous_url: str, oauth_url: str, token: str, calls: int) -> tuple[list[float], list[float]]:
    off: list[float] = []
    on: list[float] = []
    authed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    async with (
        Client(anonymous_url, mode="legacy") as plain,
        Client(streamable_http_client(oauth_url, http_client=authed), mode="legacy") as secured,
    ):
        paths = ((plain, off), (secured, on))
        for client, _ in paths:
            for _ in range(20):
                await client.call_tool("notes_search_notes", {"query": "warm"})
        for i in range(calls):
            for client, sink in paths if i % 2 == 0 else reversed(paths):
                started = time.perf_counter()
                result = await client.call_tool("notes_search_notes", {"query": "x"})
                sink.append((time.perf_counter() - started) * 1000)
                assert not result.is_error
    return off, on


def authentication(calls: int, directory: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "RS256"}
    with counting_http_server(json.dumps({"keys": [jwk]}).encode()) as (jwks_base, hits):
        oauth = {"mode": "oauth", "oauth": {"issuer": ISSUER, "jwks_url": f"{jwks_base}/jwks"}}
        anon_dir, oauth_dir = directory / "off", directory / "on"
        anon_dir.mkdir()
        oauth_dir.mkdir()
        off_cfg = write_config(anon_dir, {"backends": [demo_backend("notes")]})
        on_cfg = write_config(oauth_dir, {"backends": [demo_backend("notes")], "auth": {"incoming": oauth}})
        with running_gateway(off_cfg) as plain, running_gateway(on_cfg) as secured:
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": "bench", "aud": secured.url, "iat": now, "exp": now + 3600}
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
            off, on = anyio.run(interleaved, plain.url, secured.url, token, calls)
        table = new_table(f"tools/call through the gateway, {calls} interleaved calls each (2025-11-25 session)")
        row(table, "authentication off", off)
        row(table, "OAuth (JWT, cached JWKS)", on)
        console.print(table)
        console.print(
            f"added p50 with authentication on: {percentile(on, 50) - percentile(off, 50):+.3f} ms "
            f"(JWKS fetched {len(hits)} time(s))"
        )
        verifier_alone(key, jwks_base)


def verifier_alone(key: rsa.RSAPrivateKey, jwks_base: str) -> None:
    resource = "http://127.0.0.1:1/mcp"
    settings = OAuthConfig(issuer=ISSUER, jwks_url=f"{jwks_base}/jwks")
    now = int(time.time())

    async def run() -> tuple[list[float], list[float]]:
        verifier = TokenVerifier(settings, resource, ClaimNames())
        first: list[float] = []
        again: list[float] = []
        warm = jwt.encode({"iss": ISSUER, "sub": "w", "aud": resource, "exp": now + 600}, key, algorithm="RS256")
        await verifier.authenticate(warm)  # the JWKS fetch, once
        for i in range(300):
            claims = {"iss": ISSUER, "sub": f"user{i}", "aud": resource, "exp": now + 600, "groups": ["dev"]}
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
            started = time.perf_counter()
            await verifier.authenticate(token)
            first.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await verifier.authenticate(token)
            again.append((time.perf_counter() - started) * 1000)
        return first, again

    first, again = anyio.run(run)
    table = new_table("the token verifier alone, in process (300 tokens)")
    row(table, "first sight: RS256 signature + claims", first)
    row(table, "seen before (verified-token cache)", again)
    console.print(table)


# --- 2. Cedar at scale -----------------------------------------------------------------------------------


class ManyTools:
    """A provider of `count` tools over 50 backends; every 5th read-only, every 7th destructive."""

    searchable = True

    def __init__(self, count: int) -> None:
        verbs = ["get", "list", "create", "update", "delete", "search", "send", "read"]
        nouns = ["invoice", "ticket", "user", "file", "message", "order", "report", "calendar event", "note"]
        self._tools: dict[str, ProvidedTool] = {}
        for i in range(count):
            verb, noun = verbs[i % len(verbs)], nouns[(i // len(verbs)) % len(nouns)]
            name = f"b{i % 50}_{verb}_{noun.replace(' ', '_')}_{i}"
            tool = types.Tool(
                name=name,
                description=f"{verb} a {noun} in system {i % 50}",
                input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
                annotations=types.ToolAnnotations(read_only_hint=i % 5 == 0, destructive_hint=i % 7 == 0),
            )
            self._tools[name] = ProvidedTool(name, tool, f"b{i % 50}", name)

    def tools(self) -> Mapping[str, ProvidedTool]:
        return self._tools

    def listed(self) -> Sequence[ProvidedTool]:
        return list(self._tools.values())

    def why_unavailable(self, name: str) -> str | None:
        return None

    async def call(self, call: ToolCall) -> types.CallToolResult:
        return types.CallToolResult(content=[])


def router_over(tools: ManyTools, directory: Path) -> tuple[Router, OptimizerFront]:
    from vmcp_opt.aggregation import LiveCatalog
    from vmcp_opt.backends import BackendManager
    from vmcp_opt.health import HealthMonitor

    config = VmcpConfig.model_validate({"optimizer": {"index_dir": str(directory), "usage": False}})
    backends = BackendManager(config)
    sessions = SessionChooser(backends.ready, input_timeout=5, max_pending=4)
    router = Router(
        LiveCatalog(backends, config.aggregation), backends, sessions, HealthMonitor(backends, config).guarded
    )
    optimizer = OptimizerFront(config)
    router.add_provider(optimizer)
    router.add_provider(tools)
    optimizer.index.update_keywords([provided_record(t) for t in router.searchable_tools()])
    return router, optimizer


def cedar(count: int, queries: int, directory: Path) -> None:
    tools = ManyTools(count)
    router, optimizer = router_over(tools, directory)
    callers = [
        Caller(f"c{i}", Identification.TOKEN, "2025-11-25", subject=f"user{i}", groups=frozenset({group}))
        for i, group in enumerate(["dev", "ops"])
    ]
    words = ["delete the invoice", "send a message", "search tickets", "read the report", "create calendar event"]
    cold: list[float] = []
    listed_counts: dict[tuple[str, str | None], int] = {}

    async def run(policy: Any) -> tuple[list[float], list[float], list[int]]:
        router.policy = policy
        router.forget_views()
        listing: list[float] = []
        finding: list[float] = []
        counts: list[int] = []
        for who in callers:  # each caller's first view: computed once per catalogue
            started = time.perf_counter()
            await router.list_tools(who)
            if not isinstance(policy, AllowAll):
                cold.append((time.perf_counter() - started) * 1000)
        for i in range(queries):
            who = callers[i % 2]
            started = time.perf_counter()
            listed = await router.list_tools(who)
            listing.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            found = await router.call_tool(
                who, "find_tool", {"query": words[i % len(words)], "limit": 8}, Exchange.internal()
            )
            finding.append((time.perf_counter() - started) * 1000)
            assert found.structured_content is not None
            counts.append(len(found.structured_content["tools"]))
            listed_counts[(type(policy).__name__, who.subject)] = len(listed)
        return listing, finding, counts

    off_list, off_find, _ = anyio.run(run, AllowAll())
    on_list, on_find, counts = anyio.run(run, CedarPolicy(POLICY))
    optimizer.close()
    table = new_table(f"{count} tools, {queries} requests each, two callers (dev, ops), keyword ranking")
    row(table, "tools/list, no policy", off_list)
    row(table, "tools/list, Cedar", on_list)
    row(table, "find_tool, no policy", off_find)
    row(table, "find_tool, Cedar", on_find)
    console.print(table)
    console.print(
        f"Cedar adds p50 {percentile(on_list, 50) - percentile(off_list, 50):+.3f} ms to tools/list and "
        f"{percentile(on_find, 50) - percentile(off_find, 50):+.3f} ms to find_tool; a caller's first view of "
        f"{count} tools costs {statistics.mean(cold):.0f} ms once per catalogue (a batch of {2 * count} Cedar "
        f"decisions, off the event loop); find_tool answered {min(c for c in counts if c >= 0)}-"
        f"{max(counts)} of 8 results under the policy; tools listed: "
        + ", ".join(f"{policy}/{who}: {n}" for (policy, who), n in sorted(listed_counts.items()))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tools", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        authentication(args.calls, Path(scratch))
        cedar(args.tools, args.queries, Path(scratch) / "index")


if __name__ == "__main__":
    main()
