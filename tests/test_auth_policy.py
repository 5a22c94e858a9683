"""The parts of authentication and authorization on their own: the JWKS cache's refresh limit, Cedar
policies (loading fails closed with file and line, decisions by group and annotation, errors deny), and
find_tool filtering before ranking so a restricted caller still gets `limit` results."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

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
from vmcp_opt.auth.jwks import JwksCache
from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.metatools import OptimizerFront
from vmcp_opt.routing import Exchange, ProvidedTool, Target
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
        assert await cache.key("nope", "RS256") is None
        assert len(hits) == 1  # fetched just now: no refresh
        now[0] += 61
        assert await cache.key("nope", "RS256") is None and len(hits) == 2  # one refresh
        for _ in range(20):
            assert await cache.key(f"forged-{_}", "RS256") is None
        assert len(hits) == 2  # made-up key ids cannot make the gateway hammer the issuer
        assert await cache.key("k1", "HS256") is None  # never an HMAC check with an RSA key
        assert await cache.key("k1", "ES256") is None


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


def test_an_evaluation_error_denies_even_where_a_forbid_errors() -> None:
    # `principal.level` does not exist: the forbid errors, which Cedar alone would skip (and so allow).
    policy = CedarPolicy(
        "permit(principal, action, resource);\nforbid(principal, action, resource) when { principal.level < 3 };"
    )
    decision = policy.decide(caller("c", subject="carl"), tool_target("anything"))
    assert not decision.allowed and "evaluation error" in decision.reason


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


async def test_list_changed_reaches_a_session_only_when_what_it_is_shown_changed() -> None:
    from vmcp_opt.server.handlers import ListChangedNotifier

    router = bare_router()
    router.policy = CedarPolicy(
        'permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);\n'
        'permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource == Tool::"search");'
    )
    provider = EchoProvider("notes", ["search", "save"])
    router.add_provider(provider)

    class Session:  # what the notifier reads of an SDK Connection: its state, where admission keeps the caller
        def __init__(self, who: object) -> None:
            self.state = {"vmcp.caller": who}

    dev = Session(caller("s1", subject="dana", groups=frozenset({"dev"})))
    ops = Session(caller("s2", subject="otto", groups=frozenset({"ops"})))
    notifier = ListChangedNotifier(router)
    for session in (dev, ops):
        shown = await router.list_tools(session.state["vmcp.caller"])  # type: ignore[arg-type]
        notifier.shown(session, "tools", shown)  # type: ignore[arg-type]
    provider._tools["purge"] = ProvidedTool(
        "purge", types.Tool(name="purge", input_schema={"type": "object"}), "notes", "purge"
    )
    router.forget_views()  # as the gateway does when the tools change
    assert await notifier._changed_for(dev, "tools")  # type: ignore[arg-type]
    assert not await notifier._changed_for(ops, "tools")  # type: ignore[arg-type]  # nothing it can see changed
    assert not await notifier._changed_for(dev, "tools")  # type: ignore[arg-type]  # told once
