"""Fixes from the session's cross-check review, each through real processes: a Cedar `forbid` on an argument or a
claim no longer slipped past by sending the value as another type (`6.0` for 6, `"6"`), a bare `$NAME` warning
that no longer prints a secret option's value, a `${VAR:-default}`'s default masked in a secret's place, and
`vmcp validate --connect` accepting a workflow step that calls the optimizer's `call_tool`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.exceptions import MCPError

from tests.support import (
    DEMO_SERVER,
    Gateway,
    bearer_client,
    demo_backend,
    free_port,
    policed_config,
    running_gateway,
    running_issuer,
    wait_until,
    write_config,
)
from tests.test_auth_e2e import Issuer, private_jwk
from tests.test_config_hints import validate

pytestmark = [pytest.mark.slow]

ARG_POLICY = """\
permit(principal, action, resource);
@id("no-long-sleeps")
forbid(principal, action == Action::"call_tool", resource == Tool::"notes_slow_echo")
  when { context has arg_seconds && context.arg_seconds >= 1 };
"""
CLAIM_POLICY = """\
permit(principal, action, resource);
forbid(principal, action, resource) when { principal has claim_level && principal.claim_level > 3 };
"""


async def _echoed(gateway: Gateway, key: str, seconds: Any) -> str:
    """How a call of notes_slow_echo with `seconds` went: "ran" or "refused"."""
    async with bearer_client(gateway.url, key) as client:
        try:
            result = await client.call_tool("notes_slow_echo", {"message": "hi", "seconds": seconds})
        except MCPError:
            return "refused"
        return "error" if result.is_error else "ran"


@pytest.mark.anyio
async def test_a_forbid_on_a_long_argument_holds_for_a_whole_float_and_denies_a_type_it_cannot_judge(
    tmp_path: Path,
) -> None:
    path, keys = policed_config(tmp_path, {"ann": []}, ARG_POLICY, {"backends": [demo_backend("notes")]})
    with running_gateway(path) as gateway:
        assert await _echoed(gateway, keys["ann"], 0) == "ran"
        assert await _echoed(gateway, keys["ann"], 1) == "refused"
        assert await _echoed(gateway, keys["ann"], 1.0) == "refused"  # JSON Schema's integer: the Long 1
        assert await _echoed(gateway, keys["ann"], 0.0) == "ran"
        # Present, but no Long: the forbid cannot judge it, so the call is denied rather than run unjudged.
        assert await _echoed(gateway, keys["ann"], 0.123457) == "refused"
        assert await _echoed(gateway, keys["ann"], "s3cret-like-9") == "refused"
        wait_until(lambda: "a number that is not whole" in gateway.output(), 30, gateway.output)
        wait_until(lambda: "`arg_seconds` is a string" in gateway.output(), 30, gateway.output)
        log = gateway.output()
    assert "0.123457" not in log and "s3cret-like-9" not in log  # the log names the attribute and type only


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = {"port": free_port(), "jwks": {"keys": [private_jwk(key, "k1")]}, "clients": []}
    with running_issuer(tmp_path_factory.mktemp("issuer_fixes33"), settings) as url:
        yield Issuer(url, key)


async def _listed(issuer: Issuer, gateway: Gateway, **claims: Any) -> set[str]:
    now = int(time.time())
    base = {"iss": issuer.url, "aud": gateway.url, "iat": now, "exp": now + 300, "sub": "u", "scope": "mcp"}
    async with bearer_client(gateway.url, issuer.sign({**base, **claims})) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.anyio
async def test_a_forbid_on_a_claim_holds_for_a_whole_float_and_denies_a_claim_of_another_type(
    issuer: Issuer, tmp_path: Path
) -> None:
    (tmp_path / "policy.cedar").write_text(CLAIM_POLICY)
    auth = {
        "incoming": {"mode": "oauth", "oauth": {"issuer": issuer.url}},
        "authorization": {"policies": "policy.cedar"},
    }
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "auth": auth})
    with running_gateway(config) as gateway:
        assert "notes_save_note" in await _listed(issuer, gateway, level=2)
        assert "notes_save_note" in await _listed(issuer, gateway)
        assert await _listed(issuer, gateway, level=5) == set()
        assert await _listed(issuer, gateway, level=5.0) == set()
        assert await _listed(issuer, gateway, level="5") == set()
        assert await _listed(issuer, gateway, level={"n": 5}) == set()
        wait_until(lambda: "`claim_level` is an object" in gateway.output(), 30, gateway.output)


def test_a_bare_variable_in_a_secret_options_value_is_warned_of_without_its_text(tmp_path: Path) -> None:
    args = [str(DEMO_SERVER), "--password", "$uperSecret9", "--api-key", "$k3yMaterial", "--token=$tokVal77"]
    args += ["--zone", "$T33_ZONE", "--label", "$lowerName"]
    backend = {"name": "db", "command": sys.executable, "args": args}
    result = validate(write_config(tmp_path, {"backends": [backend]}))
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    for secret in ("uperSecret9", "k3yMaterial", "tokVal77", "lowerName"):
        assert secret not in said
    assert "backends[0].args[4]: a `$` before a name is used as written" in said
    assert "backends[0].args[7]: $T33_ZONE is used as written" in said  # written as a variable, in no secret's place


def test_validate_connect_accepts_a_workflow_step_calling_call_tool_with_the_optimizer_on(tmp_path: Path) -> None:
    step = {"id": "go", "tool": "call_tool", "arguments": {"tool_name": "notes_save_note", "arguments": {}}}
    workflow = {"name": "proxy", "description": "run a named tool", "steps": [step]}
    config = {"backends": [demo_backend("notes")], "workflows": [workflow], "optimizer": {"enabled": True}}
    path = write_config(tmp_path, config)
    command = [sys.executable, "-m", "vmcp_opt", "validate", "--connect", "-c", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "call_tool" not in result.stderr
    # Without the optimizer the gateway serves no call_tool: such a step is still named.
    path = write_config(tmp_path, {**config, "optimizer": {"enabled": False}})
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "unknown tool 'call_tool'" in result.stderr, result.stderr


def test_a_default_in_a_secret_named_env_value_is_masked_like_the_variables_value(tmp_path: Path) -> None:
    """`API_KEY: "pre-${UNSET:-piece}"`: the whole value was masked, but a process printing the default alone showed
    it, while the variable's own value would have been masked wherever it appeared."""
    script = tmp_path / "leaky.py"
    script.write_text(
        'import os, sys\nsys.stderr.write("key piece " + os.environ["API_KEY"].split("-", 1)[1] + "\\n")\nsys.exit(1)\n'
    )
    env = {"API_KEY": "pre-${T33_NEVER_SET:-dfltPiece77}"}
    backend = {"name": "b", "command": sys.executable, "args": [str(script)], "env": env}
    path = write_config(tmp_path, {"backends": [backend]})
    command = [sys.executable, "-m", "vmcp_opt", "validate", "--connect", "-c", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "key piece ***" in result.stderr, result.stderr
    assert "dfltPiece77" not in result.stdout + result.stderr
