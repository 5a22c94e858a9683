"""The parts of authentication and authorization on their own: the JWKS cache's refresh limit, Cedar
policies (loading fails closed with file and line, decisions by group and annotation, errors deny), and
find_tool filtering before ranking so a restricted caller still gets `limit` results."""

from __future__ import annotations

import getpass
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel
import jwt
import mcp_types as types
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import counting_http_server
from tests.test_router import EchoProvider, bare_router, caller
from vmcp_opt.auth import Identification
from vmcp_opt.auth.cedar import CedarPolicy
from vmcp_opt.auth.errors import AuthError
from vmcp_opt.auth.introspection import Introspection
from vmcp_opt.auth.jwks import JwksCache, JwksUnavailable
from vmcp_opt.auth.tokens import TokenVerifier
from vmcp_opt.config import ClaimNames, OAuthConfig, VmcpConfig
from vmcp_opt.optimizer.metatools import OptimizerFront
from vmcp_opt.routing import Exchange, Target
from vmcp_opt.routing.policy import PolicyLoadError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the JWKS cache ----------------------------------------------------------------------------------


async def test_an_unknown_kid_refreshes_the_jwks_once_per_interval() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1"}
    now = [1000.0]
    with counting_http_server(json.dumps({"keys": [jwk]}).encode()) as (base, hits):
        cache = JwksCache("http://issuer", f"{base}/jwks", refresh_interval=60, clock=lambda: now[0])
        assert await cache.key("k1", "RS256") is not None and len(hits) == 1
        with pytest.raises(JwksUnavailable) as early:  # fetched just now: no refresh, retry when one is allowed
            await cache.key("nope", "RS256")
        assert early.value.retry_after == 60 and len(hits) == 1
        now[0] += 61
        assert await cache.key("nope", "RS256") is None and len(hits) == 2  # one refresh
        for _ in range(20):
            with pytest.raises(JwksUnavailable):
                await cache.key(f"forged-{_}", "RS256")
        assert len(hits) == 2  # made-up key ids cannot make the gateway hammer the issuer
        assert await cache.key("k1", "HS256") is None  # never an HMAC check with an RSA key
        assert await cache.key("k1", "ES256") is None


# --- tokens: expiry from the cache, introspection answers ------------------------------------------------


async def test_a_jwt_whose_exp_is_a_numeric_string_expires_from_the_verified_cache() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1"}
    now = [time.time()]
    with counting_http_server(json.dumps({"keys": [jwk]}).encode()) as (base, _):
        settings = OAuthConfig(issuer="http://issuer", jwks_url=f"{base}/jwks", clock_skew=30)
        verifier = TokenVerifier(settings, "http://gw/mcp", ClaimNames(), clock=lambda: now[0])
        claims = {"iss": "http://issuer", "aud": "http://gw/mcp", "sub": "alice", "exp": str(int(now[0]) + 3)}
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})  # PyJWT accepts such an exp
        identity = await verifier.authenticate(token)
        assert identity.expires_at == int(now[0]) + 3
        now[0] += 40  # past exp + clock_skew: the cached identity must not outlive it
        with pytest.raises(AuthError, match="expired"):
            await verifier.authenticate(token)


class IntrospectionServer:
    """A loopback RFC 7662 endpoint (HTTP/1.1, keep-alive): `answer(token)` gives the status and JSON body;
    it records each token asked about and the client port it came from (one port: one connection)."""

    def __init__(self, answer: Callable[[str], tuple[int, dict[str, Any]]]) -> None:
        self.answer = answer
        self.asked: list[str] = []
        self.ports: set[int] = set()

    @contextmanager
    def running(self) -> Iterator[str]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                token = form["token"][0]
                outer.asked.append(token)
                outer.ports.add(self.client_address[1])
                status, body = outer.answer(token)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/introspect"
        finally:
            server.shutdown()
            server.server_close()


def introspection(url: str, clock: Callable[[], float], monkeypatch: pytest.MonkeyPatch) -> Introspection:
    monkeypatch.setenv("VMCP_TEST_INTROSPECTION_SECRET", "s3cret")
    settings = OAuthConfig(
        issuer="http://issuer",
        introspection_url=url,
        client_id="gateway",
        client_secret_env="VMCP_TEST_INTROSPECTION_SECRET",
    )
    return Introspection(settings, ["http://gw/mcp"], ClaimNames(), clock)


async def test_inactive_tokens_are_refused_from_memory_and_one_connection_serves_every_question(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    server = IntrospectionServer(lambda token: (200, {"active": False}))
    with server.running() as url:
        checker = introspection(url, lambda: now[0], monkeypatch)
        try:
            for _ in range(3):
                for token in ("garbage-1", "garbage-2"):
                    with pytest.raises(AuthError, match="not active") as refused:
                        await checker.authenticate(token)
                    assert refused.value.status == 401
            assert server.asked == ["garbage-1", "garbage-2"]  # asked once each; then refused from memory
            assert len(server.ports) == 1  # one kept-alive connection, not one per question
            now[0] += 31  # the negative answer is brief: asked again once it lapses
            with pytest.raises(AuthError):
                await checker.authenticate("garbage-1")
            assert server.asked == ["garbage-1", "garbage-2", "garbage-1"]
        finally:
            await checker.aclose()


async def test_an_introspection_400_about_the_token_is_401_and_one_about_the_gateways_request_is_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {
        "unsupported": (400, {"error": "unsupported_token_type"}),
        "bad-request": (400, {"error": "invalid_request"}),
        "bad-token": (400, {"error": "invalid_token"}),
        "down": (502, {"error": "bad_gateway"}),
        "client-refused": (400, {"error": "invalid_client"}),  # the gateway's own credentials: its trouble
    }
    server = IntrospectionServer(lambda token: answers[token])
    with server.running() as url:
        checker = introspection(url, time.time, monkeypatch)
        try:
            for token, status in [
                ("unsupported", 401),
                ("bad-request", 503),  # RFC 7662 answers a bad token `active: false`: this is about our request
                ("bad-token", 401),
                ("down", 503),
                ("client-refused", 503),
            ]:
                with pytest.raises(AuthError) as refused:
                    await checker.authenticate(token)
                assert refused.value.status == status, token
                if status == 401:
                    assert refused.value.error == "invalid_token"
                    assert "does not know this token" in refused.value.description
        finally:
            await checker.aclose()


async def test_an_introspected_token_whose_exp_is_a_numeric_string_expires_from_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    answer = {"active": True, "sub": "carol", "aud": "http://gw/mcp", "iss": "http://issuer", "exp": "1003"}
    server = IntrospectionServer(lambda token: (200, answer))
    with server.running() as url:
        checker = introspection(url, lambda: now[0], monkeypatch)
        try:
            assert (await checker.authenticate("opaque")).expires_at == 1003
            now[0] += 61  # past the cache's 60 s and the token's exp + clock_skew: asked again, and refused
            with pytest.raises(AuthError, match="expired"):
                await checker.authenticate("opaque")
        finally:
            await checker.aclose()


# --- Cedar -------------------------------------------------------------------------------------------

POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource)
when { resource.read_only };
@id("no-destruction-outside-admins")
forbid(principal, action == Action::"call_tool", resource)
when { resource.destructive && !(principal in Group::"admin") };
"""


def tool_target(name: str, source: str = "files", **hints: bool) -> Target:
    annotations = types.ToolAnnotations(**hints) if hints else None
    return Target("tool", name, source, "use", annotations)


def test_cedar_decides_by_group_and_by_the_tools_annotations() -> None:
    policy = CedarPolicy(POLICY)
    dev = caller("d", subject="dana", groups=frozenset({"dev"}))
    guest = caller("g", subject="gus")
    reader = tool_target("read_file", read_only_hint=True, destructive_hint=False)
    writer = tool_target("write_file", read_only_hint=False, destructive_hint=False)
    deleter = tool_target("delete_file")  # no annotations: destructive by the MCP default
    assert policy.decide(guest, reader).allowed and not policy.decide(guest, writer).allowed
    assert policy.decide(dev, writer).allowed
    refused = policy.decide(dev, deleter)
    assert not refused.allowed and "no-destruction-outside-admins" in refused.reason
    admin = caller("a", subject="ann", groups=frozenset({"dev", "admin"}))
    assert policy.decide(admin, deleter).allowed
    assert policy.decide(guest, Target("tool", "find_tool", "vmcp")).allowed  # the meta-tools


def test_a_backend_tool_from_the_gateways_own_source_is_decided_by_the_policy() -> None:
    # Only find_tool/call_tool by name skip the policy: a tool of source "vmcp" with another name does not.
    policy = CedarPolicy('permit(principal in Group::"dev", action, resource);')
    ops = caller("o", subject="bob", groups=frozenset({"ops"}))
    backend_tool = tool_target("vmcp_save_note", source="vmcp")
    assert not policy.decide(ops, backend_tool).allowed
    meta = [Target("tool", "find_tool", "vmcp", operation) for operation in ("list", "use")]
    decisions = policy.decide_all(ops, [*meta, backend_tool, Target("tool", "call_tool", "vmcp")])
    assert [d.allowed for d in decisions] == [True, True, False, True]


def test_a_target_judged_in_a_view_is_not_judged_again_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    # A caller's view (tools/list, find_tool, a wrong name's suggestions) judges every tool; calling a hidden one
    # afterwards must cost no evaluation of its own, or its answer would come later than a made-up name's.
    import cedarpy

    batches: list[int] = []
    evaluate = cedarpy.is_authorized_batch

    def counted(requests: list[Any], *args: Any) -> Any:
        batches.append(len(requests))
        return evaluate(requests, *args)

    monkeypatch.setattr(cedarpy, "is_authorized_batch", counted)
    policy = CedarPolicy(POLICY)
    guest = caller("g", subject="gus")
    reader = tool_target("read_file", read_only_hint=True, destructive_hint=False)
    hidden = tool_target("delete_file")
    assert [d.allowed for d in policy.decide_all(guest, [reader, hidden])] == [True, False]
    assert batches == [2]
    refused = policy.decide(guest, hidden)
    assert not refused.allowed and "no-destruction-outside-admins" in refused.reason
    assert policy.decide(guest, reader).allowed and batches == [2]
    # Only what is not known yet goes to the engine; another principal is judged afresh.
    writer = tool_target("write_file", read_only_hint=False, destructive_hint=False)
    assert [d.allowed for d in policy.decide_all(guest, [reader, writer, hidden])] == [True, False, False]
    assert batches == [2, 1]
    assert policy.decide(caller("d", subject="dana", groups=frozenset({"dev"})), writer).allowed
    assert batches == [2, 1, 1]


# Valid against the schema, yet an error at evaluation: a misspelt attribute is refused at load instead.
OVERFLOW = "9223372036854775807 + 1 > 0"


def test_an_evaluation_error_denies_even_where_a_forbid_errors() -> None:
    # The forbid errors (an integer overflow), which Cedar alone would skip (and so allow).
    policy = CedarPolicy(
        f"permit(principal, action, resource);\nforbid(principal, action, resource) when {{ {OVERFLOW} }};"
    )
    decision = policy.decide(caller("c", subject="carl"), tool_target("anything"))
    assert not decision.allowed and "evaluation error" in decision.reason


def test_an_evaluation_error_says_what_failed_and_is_logged_once_per_policy(caplog: pytest.LogCaptureFixture) -> None:
    policy = CedarPolicy(f"permit(principal, action, resource) when {{ {OVERFLOW} }};", "policy.cedar")
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.auth.cedar"):
        decisions = [policy.decide(caller("c", subject="carl"), tool_target(f"tool_{i}")) for i in range(3)]
    assert all(not d.allowed for d in decisions)
    assert "integer overflow" in decisions[0].reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "policy.cedar" in warnings[0] and "integer overflow" in warnings[0]


def test_a_policy_that_does_not_parse_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text(
        "// who may do what\npermit(principal, action, resource);\n\npermit(principal, action, resource)\n"
        "when { resource.backend == };\n"
    )
    with pytest.raises(PolicyLoadError) as raised:
        CedarPolicy.from_file(path)
    assert str(raised.value).startswith(f"{path}:5: ")


def test_an_unknown_action_is_a_load_error_not_a_silent_never_match(tmp_path: Path) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text(
        'permit(principal, action, resource);\nforbid(principal, action == Action::"call_tools", resource);\n'
    )
    with pytest.raises(PolicyLoadError, match=r':2: unknown action Action::"call_tools"'):
        CedarPolicy.from_file(path)
    path.write_text(
        'permit(principal, action, resource);\nforbid(principal, action ==\n  Action :: "call_tools", resource);\n'
    )
    with pytest.raises(PolicyLoadError, match=r':3: unknown action Action::"call_tools"'):  # whatever the spacing
        CedarPolicy.from_file(path)


def test_a_policy_template_is_reported_as_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text("// dev only\npermit(principal == ?principal, action, resource);\n")
    with pytest.raises(PolicyLoadError, match=r"policy.cedar:2: policy templates .* are not supported"):
        CedarPolicy.from_file(path)


def test_a_policy_file_not_utf8_is_a_one_line_error_from_vmcp_validate(tmp_path: Path) -> None:
    (tmp_path / "policy.cedar").write_bytes(
        b'permit(principal, action, resource);\npermit(principal, action, resource) when { principal.subject == "\xff\xfe" };\n'
    )
    config = tmp_path / "vmcp.yaml"
    config.write_text("auth: {authorization: {policies: policy.cedar}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'policy.cedar'}:2: not UTF-8 text (byte 0xff" in " ".join(done.stderr.split())


async def test_find_tool_filters_before_ranking_so_a_restricted_caller_still_gets_limit_results(tmp_path: Path) -> None:
    config = VmcpConfig.model_validate({"optimizer": {"enabled": True, "index_dir": str(tmp_path), "usage": False}})
    router = bare_router(config)
    # 40 "delete" tools rank first for the query; the caller may use only the 10 "remove" tools below them.
    router.policy = CedarPolicy(
        'permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource in Backend::"safe");'
    )
    optimizer = OptimizerFront(config)
    router.add_provider(optimizer)
    router.add_provider(EchoProvider("danger", [f"delete_record_{i}" for i in range(40)]))
    router.add_provider(EchoProvider("safe", [f"remove_delete_entry_{i}" for i in range(10)]))
    await optimizer.tools_changed(router.searchable_tools())
    try:
        who = caller("c", subject="carol")
        found = await router.call_tool(who, "find_tool", {"query": "delete record", "limit": 6}, Exchange.internal())
        assert found.structured_content is not None
        names = [t["name"] for t in found.structured_content["tools"]]
        assert len(names) == 6 and all(name.startswith("remove_delete_entry_") for name in names)
        assert {t.name for t in await router.list_tools(who)} == {"find_tool", "call_tool"} | {
            f"remove_delete_entry_{i}" for i in range(10)
        }
    finally:
        optimizer.close()
    await anyio.lowlevel.checkpoint()


def test_vmcp_validate_names_the_policy_file_and_line_that_would_stop_the_start(tmp_path: Path) -> None:
    (tmp_path / "policy.cedar").write_text(
        "permit(principal, action, resource);\nforbid(principal, action resource);\n"
    )
    config = tmp_path / "vmcp.yaml"
    config.write_text("auth: {authorization: {policies: policy.cedar}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert f"auth.authorization.policies: {tmp_path / 'policy.cedar'}:2: " in " ".join(done.stderr.split())


def test_over_stdio_the_local_os_user_is_the_caller() -> None:
    from vmcp_opt.server.admission import Admission

    identity = Admission("stdio")._local_user
    assert identity is not None and identity.subject == getpass.getuser()
    assert Admission("http")._local_user is None


async def test_an_approval_ticket_is_for_one_tool_and_one_use() -> None:
    from mcp.shared.exceptions import MCPError

    from vmcp_opt.routing.approval import ANSWER_KEY, Approvals
    from vmcp_opt.routing.round_trips import InputRequired, round_of

    approvals = Approvals()
    who = caller(
        "c",
        subject="carol",
        protocol_version="2026-07-28",
        capabilities=types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    )
    with pytest.raises(InputRequired) as asked:
        await approvals.confirm(who, Exchange.internal(), "drop_table", "It deletes data.")
    state = asked.value.result.request_state
    assert state is not None
    accept = {ANSWER_KEY: types.ElicitResult(action="accept", content={"approve": True})}

    def retry() -> Exchange:
        round_ = round_of("tools/call", {"requestState": state}, "2026-07-28")
        return Exchange("tools/call", round=round_, input_responses=accept)  # type: ignore[arg-type]

    with pytest.raises(MCPError, match="another call"):
        await approvals.confirm(who, retry(), "other_tool", "")
    # Naming another tool did not spend the ticket; using it does:
    approved = await approvals.confirm(who, retry(), "drop_table", "")
    assert approved.round is None and approved.input_responses is None
    with pytest.raises(MCPError, match="already used"):
        await approvals.confirm(who, retry(), "drop_table", "")


# --- the HTTP middleware -----------------------------------------------------------------------------


async def test_a_token_without_the_required_scopes_gets_403_insufficient_scope_naming_them() -> None:
    import httpx2
    from starlette.responses import PlainTextResponse

    from vmcp_opt.auth.identity import Identity
    from vmcp_opt.server.authentication import RequireAuthentication

    class OneToken:
        async def authenticate(self, credential: str) -> Identity:
            from vmcp_opt.auth import errors

            if credential != "good":
                raise errors.invalid_token("unknown token")
            return Identity("alice", Identification.TOKEN, scopes=frozenset({"mcp"}))

    app = RequireAuthentication(PlainTextResponse("ok"), OneToken(), "http://gw/.well-known/x", ["mcp", "admin"])
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw") as client:
        short = await client.post("/mcp", headers={"Authorization": "Bearer good"})
        assert short.status_code == 403
        challenge = short.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="mcp admin"' in challenge
        assert (await client.post("/mcp", headers={"Authorization": "Basic Zm9vOmJhcg=="})).status_code == 401
        two = [("authorization", "Bearer good"), ("authorization", "Bearer other")]
        assert (await client.post("/mcp", headers=two)).status_code == 400
