"""Cedar policies on the caller's token claims (`principal.claim_<name>`) and a call's arguments
(`context.arg_<name>`), as ToolHive's vMCP exposes them.

Before, the gateway refused such policies at load (`attribute claim_email not found on User`, `arg_timezone not
found` in the context): a policy could not tell callers apart by email nor forbid a call by what it asks for.
Checked through a real gateway: callers with tokens the real OpenID provider's key signs, and API-key callers
calling the demo notes backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.exceptions import MCPError

from tests.support import (
    Gateway,
    bearer_client,
    demo_backend,
    free_port,
    policed_config,
    running_gateway,
    running_issuer,
    write_config,
)
from tests.test_auth_e2e import Issuer, private_jwk
from vmcp_opt.auth import cedar_schema
from vmcp_opt.auth.caller import Caller, Identification
from vmcp_opt.auth.cedar import CedarPolicy
from vmcp_opt.routing.policy import PolicyLoadError, Target

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CLAIM_POLICY = """\
permit(principal, action, resource) when { principal has claim_email && principal.claim_email like "*@corp.example" };
forbid(principal, action, resource) when { principal has claim_suspended && principal.claim_suspended };
"""
ARG_POLICY = """\
permit(principal, action, resource);
@id("no-secrets")
forbid(principal, action == Action::"call_tool", resource == Tool::"notes_save_note")
  when { context has arg_title && context.arg_title like "*secret*" };
"""
DENIED = "Unknown tool: 'notes_save_note'"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = {"port": free_port(), "jwks": {"keys": [private_jwk(key, "k1")]}, "clients": []}
    with running_issuer(tmp_path_factory.mktemp("issuer33"), settings) as url:
        yield Issuer(url, key)


def user_token(issuer: Issuer, gateway: Gateway, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": issuer.url, "aud": gateway.url, "iat": now, "exp": now + 300, "client_id": "webapp"}
    return issuer.sign({**base, "scope": "mcp", **claims})


async def listed_and_saved(gateway: Gateway, credential: str, title: str = "t") -> tuple[set[str], str]:
    """The tools the caller is listed, and how its call of notes_save_note with `title` went."""
    async with bearer_client(gateway.url, credential) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        try:
            result = await client.call_tool("notes_save_note", {"title": title, "text": "claims33"})
        except MCPError as refused:
            return listed, refused.error.message
        return listed, "error" if result.is_error else "saved"


async def test_a_policy_permits_only_callers_whose_email_claim_matches(issuer: Issuer, tmp_path: Path) -> None:
    (tmp_path / "policy.cedar").write_text(CLAIM_POLICY)
    auth = {
        "incoming": {"mode": "oauth", "oauth": {"issuer": issuer.url}},
        "authorization": {"policies": "policy.cedar"},
    }
    config = {"backends": [demo_backend("notes")], "auth": auth}
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as running:
        listed, saved = await listed_and_saved(
            running, user_token(issuer, running, sub="ann", email="ann@corp.example")
        )
        assert "notes_save_note" in listed and saved == "saved"
        denied = "Unknown tool: 'notes_save_note'"
        outsider = user_token(issuer, running, sub="eve", email="eve@elsewhere.example")
        assert await listed_and_saved(running, outsider) == (set(), denied)
        # A claim of another type than the policy uses cannot be judged: the caller is denied.
        assert await listed_and_saved(running, user_token(issuer, running, sub="num", email=42)) == (set(), denied)
        no_email = user_token(issuer, running, sub="none", nested={"email": "x@corp.example"})
        assert await listed_and_saved(running, no_email) == (set(), denied)
        # The same subject with another claim is judged again, not served a kept decision.
        suspended = user_token(issuer, running, sub="ann", email="ann@corp.example", suspended=True)
        assert await listed_and_saved(running, suspended) == (set(), denied)
        listed, saved = await listed_and_saved(
            running, user_token(issuer, running, sub="ann", email="ann@corp.example")
        )
        assert "notes_save_note" in listed and saved == "saved"


async def test_a_policy_forbids_a_call_whose_argument_matches(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}}
    path, keys = policed_config(tmp_path, {"ann": []}, ARG_POLICY, config)
    secret_title = "top secret plan 7f3a"
    with running_gateway(path, "--log-level", "info") as running:
        listed, saved = await listed_and_saved(running, keys["ann"], "groceries")
        assert "notes_save_note" in listed and saved == "saved"
        listed, saved = await listed_and_saved(running, keys["ann"], secret_title)
        assert "notes_save_note" in listed  # listed: judged without arguments
        assert saved.startswith(DENIED)  # what an unknown name gets (here naming the tool, which the caller sees)
        # Past the bound a named argument is not cut (a cut one could slip past the forbid): the call is denied.
        long_title = "x" * (cedar_schema.MAX_VALUE_CHARS + 1)
        assert (await listed_and_saved(running, keys["ann"], long_title))[1].startswith(DENIED)
        listed, saved = await listed_and_saved(running, keys["ann"], "groceries again")  # nothing kept from those
        assert saved == "saved"
    log = running.output()
    assert "forbidden by policy no-secrets" in log
    assert "7f3a" not in log and "xxxxxxxx" not in log  # the arguments' values are never logged


# --- in this process, with the real engine ------------------------------------------------------------------


def caller(**claims: Any) -> Caller:
    return Caller("c", Identification.TOKEN, "2025-11-25", subject="u", claims=claims)


def call(arguments: dict[str, Any]) -> Target:
    return Target("tool", "notes_save_note", "notes", "use", arguments=arguments)


def test_claims_and_arguments_are_typed_by_their_use_and_other_values_are_denied() -> None:
    policy = CedarPolicy(
        "permit(principal, action, resource) when {\n"
        "  principal has claim_level && principal.claim_level >= 3 &&\n"
        '  principal has claim_teams && principal.claim_teams.contains("core") &&\n'
        "  context has arg_dry_run && context.arg_dry_run };\n"
    )
    assert policy.claim_kinds == {"claim_level": {"type": "Long"}, "claim_teams": cedar_schema._STRINGS}
    assert policy.arg_kinds == {"arg_dry_run": {"type": "Boolean"}}
    ok = caller(level=3, teams=["core", "web"])
    assert policy.decide(ok, call({"dry-run": True})).allowed  # `dry-run` is the identifier `dry_run`
    assert not policy.decide(
        ok, call({"dry_run": "true"})
    ).allowed  # a string is not a Boolean: cannot be judged, denied
    for bad in (caller(level=2**63, teams=["core"]), caller(level=3.5, teams=["core"]), caller(level=3, teams=[1])):
        assert not policy.decide(bad, call({"dry_run": True})).allowed
    # Two arguments made alike as identifiers cannot be judged: denied, without their values.
    twice = policy.decide(ok, call({"dry-run": True, "dry_run": False}))
    assert not twice.allowed and "arg_dry_run" in twice.reason


def test_a_policy_reading_a_claim_without_has_is_refused_at_load_saying_how_to_test_it() -> None:
    with pytest.raises(PolicyLoadError) as refused:
        CedarPolicy('permit(principal, action, resource) when { principal.claim_email like "*@corp.com" };')
    assert "principal has claim_email && principal.claim_email" in str(refused.value)
