"""Policies checked against the gateway's Cedar schema at load, `vmcp auth new-key` with roles and scopes, the
`vmcp auth` help, and a per-tool rate limit that `call_tool` from new sessions cannot escape.

Real `vmcp` processes throughout: `validate`, `serve` (a real gateway with the demo backend), `auth new-key`, and
MCP clients over HTTP (the SDK client, or raw requests where the status matters).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cedarpy
import httpx2
import pytest
from mcp import Client, types
from mcp.shared.exceptions import MCPError

from tests.support import ROOT, Gateway, bearer_client, demo_backend, running_gateway, stop_process, write_config
from tests.test_rate_limits_http import HEADERS, client_from, open_session
from vmcp_opt.auth.caller import Caller, Identification
from vmcp_opt.auth.cedar import _principal, _resource
from vmcp_opt.auth.cedar_schema import ACTIONS, SCHEMA
from vmcp_opt.routing.policy import Target


def vmcp(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"COLUMNS": str(columns)} if columns else {})}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, env=env
    )


def one_line(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


# --- policies validated against the schema -----------------------------------------------------------------

TYPOS = {
    "entity type": (
        'permit(principal in Grup::"dev", action, resource);',
        r"policy1: unrecognized entity type `Grup`; the entity types are Backend, Group, Prompt, Resource, Tool, User",
    ),
    "attribute": (
        'permit(principal, action == Action::"call_tool", resource) when { resource.readonly };',
        r"policy1: attribute `readonly` not found on Tool \(their attributes: Tool \[backend, destructive, ",
    ),
    "attribute of another type": (
        "permit(principal, action, resource) when { resource.read_only };",
        r"policy1: attribute `read_only` not found on Prompt, Resource .* only Tool has it",
    ),
    "type": (
        "forbid(principal, action, resource) unless { principal.roles.contains(1) };",
        r"policy1: the types Long and String are not compatible",
    ),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_vmcp_validate_names_the_policy_and_what_does_not_match_the_gateways_schema(tmp_path: Path, typo: str) -> None:
    text, expected = TYPOS[typo]
    policy = tmp_path / "policy.cedar"
    policy.write_text(f'// who may do what\npermit(principal in Group::"dev", action, resource);\n\n{text}\n')
    config = write_config(tmp_path, {"auth": {"authorization": {"policies": "policy.cedar"}}})
    done = vmcp("validate", "-c", str(config), columns=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    # The line of the policy that fails, and that policy only (the first one is valid).
    assert re.search(rf"auth\.authorization\.policies: {re.escape(str(policy))}:4: {expected}", done.stderr), (
        done.stderr
    )
    assert ":2: " not in done.stderr


def test_every_policy_that_fails_is_reported_with_its_line_and_id_in_one_pass(tmp_path: Path) -> None:
    policy = tmp_path / "policy.cedar"
    policy.write_text(
        "permit(principal, action, resource) when { principal.level > 2 };\n"
        '// a forbid that would never match, so never forbid: "a permit that never forbids"\n'
        '@id("no-deletes")\n'
        'forbid(principal, action == Action::"call_tool", resource == Tol::"notes_add_tool");\n'
    )
    config = write_config(tmp_path, {"auth": {"authorization": {"policies": "policy.cedar"}}})
    done = vmcp("validate", "-c", str(config), columns=300)
    assert done.returncode == 2, done.stderr
    assert f"{policy}:1: policy0: attribute `level` not found on User" in done.stderr
    assert f'{policy}:3: policy "no-deletes": unrecognized entity type `Tol`' in done.stderr


@pytest.mark.slow
def test_serve_refuses_to_start_on_a_policy_that_does_not_match_the_schema(tmp_path: Path) -> None:
    (tmp_path / "policy.cedar").write_text('permit(principal in Grup::"dev", action, resource);\n')
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "auth": {"authorization": {"policies": "policy.cedar"}}}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "300"},
    )
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode == 2
    assert "cannot start: auth.authorization.policies" in one_line(output.decode())
    assert "policy.cedar:1: policy0: unrecognized entity type `Grup`" in one_line(output.decode())


def test_the_entities_and_requests_the_gateway_sends_conform_to_its_schema() -> None:
    """SCHEMA describes what `decide_all` sends, so a policy that validates sees those attributes at run time."""
    entities: dict[tuple[str, str], dict[str, Any]] = {}
    who = Caller("c", Identification.API_KEY, "2025-11-25", subject="alice", groups=frozenset({"dev"}))
    principal = _principal(who, entities)
    hints = types.ToolAnnotations(read_only_hint=True)
    requests = []
    for kind, operation in ACTIONS:
        target = Target(kind, f"{kind}_x", "notes", operation, hints if kind == "tool" else None)
        action = {"type": "Action", "id": ACTIONS[(kind, operation)]}
        requests.append({"principal": principal, "action": action, "resource": _resource(target, entities)})
    cedarpy.Entities.from_json_str(json.dumps(list(entities.values())), schema=SCHEMA)  # raises when they do not
    results = cedarpy.is_authorized_batch(
        requests, "permit(principal, action, resource);", json.dumps(list(entities.values())), schema=SCHEMA
    )
    assert [r.diagnostics.errors for r in results] == [[]] * len(requests)
    assert all(r.allowed for r in results)


def test_the_readme_policies_validate() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"cat > policy\.cedar <<'EOF'\n(.*?)\nEOF", readme, re.S)
    blocks += re.findall(r"```cedar\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        text = "\n".join(line.strip() for line in block.splitlines())
        assert cedarpy.validate_policies(text, SCHEMA).validation_passed, block


def test_vmcp_auth_schema_prints_the_schema_policies_are_validated_against() -> None:
    done = vmcp("auth", "schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == SCHEMA


# --- vmcp auth new-key --role/--scope ---------------------------------------------------------------------

ROLE_POLICY = """\
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource == Tool::"notes_search_notes")
when { principal.scopes.contains("notes:read") };
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource == Tool::"notes_whoami")
when { principal.roles.contains("auditor") && principal.client_id == "laptop" };
"""


def new_key(*args: str) -> tuple[str, str]:
    """`vmcp auth new-key` as an operator runs it: the key and the entry line it printed."""
    done = vmcp("auth", "new-key", *args)
    assert done.returncode == 0, done.stderr
    key = re.search(r"key \(shown once, give it to .*\): (vmcp_\S+)", done.stdout)
    entry = re.search(r"^  - (\{.*\})$", done.stdout, re.M)
    assert key and entry, done.stdout
    return key.group(1), entry.group(1)


@pytest.mark.slow
def test_a_new_key_with_a_role_and_a_scope_is_accepted_and_its_role_applied_by_a_real_gateway(tmp_path: Path) -> None:
    alice_key, alice_entry = new_key(
        "--subject", "alice", "--group", "dev", "--role", "auditor", "--scope", "notes:read", "--name", "laptop"
    )
    bob_key, bob_entry = new_key("--subject", "bob", "-s", "notes:read,mcp")  # no role
    assert json.loads(alice_entry)["roles"] == ["auditor"] and json.loads(bob_entry)["scopes"] == ["notes:read", "mcp"]
    # Pasted into the keys file exactly as printed, as the README says.
    (tmp_path / "keys.yaml").write_text(f"keys:\n  - {alice_entry}\n  - {bob_entry}\n")
    (tmp_path / "policy.cedar").write_text(ROLE_POLICY)
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "auth": {
                "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.yaml"}},
                "authorization": {"policies": "policy.cedar"},
            },
        },
    )
    assert vmcp("validate", "-c", str(config)).returncode == 0

    async def visible(key: str) -> tuple[set[str], str | None]:
        async with bearer_client(gateway.url, key) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            try:
                await client.call_tool("notes_whoami", {})
                refusal = None
            except MCPError as refused:
                refusal = refused.error.message
        return listed, refusal

    with running_gateway(config) as gateway:
        alice_tools, alice_refusal = anyio.run(visible, alice_key)
        bob_tools, bob_refusal = anyio.run(visible, bob_key)
    assert alice_tools == {"notes_search_notes", "notes_whoami"} and alice_refusal is None
    assert bob_tools == {"notes_search_notes"}
    assert bob_refusal == "Unknown tool: 'notes_whoami'"  # as for a tool that does not exist


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", ""), "--role: an empty value; give a name (e.g. --role auditor)"),
        (("--scope", " , "), "--scope: an empty value; give a name (e.g. --scope notes:read)"),
        (("-g", "dev", "--group", ""), "--group: an empty value; give a name (e.g. --group dev)"),
    ],
)
def test_new_key_refuses_an_empty_role_scope_or_group_before_making_a_key(args: tuple[str, ...], message: str) -> None:
    done = vmcp("auth", "new-key", "--subject", "alice", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stdout == "" and done.stderr.splitlines() == [message]


def test_a_keys_file_whose_roles_are_not_names_is_refused_naming_the_entry(tmp_path: Path) -> None:
    """A role the gateway dropped would make the caller someone else to the policy: refused, not dropped."""
    _, entry = new_key("--subject", "alice")
    (tmp_path / "keys.yaml").write_text(f"keys:\n  - {entry}\n  - {{sha256: {'a' * 64}, subject: bob, roles: [1]}}\n")
    config = write_config(tmp_path, {"auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.yaml"}}}})
    done = vmcp("validate", "-c", str(config), columns=300)
    assert done.returncode == 2, done.stderr
    assert "keys[1].roles: expected a list of non-empty strings" in done.stderr


# --- the help of every command ----------------------------------------------------------------------------

HELPED = [
    (),
    ("serve",),
    ("validate",),
    ("auth",),
    ("auth", "new-key"),
    ("auth", "check"),
    ("index",),
    ("index", "search"),
    ("workflow", "run"),
    ("models", "export"),
    ("eval", "run"),
]


WIDTHS = [60, 200]

# Every help above at every width, from one real `vmcp` process (the CLI's own entry point, `COLUMNS` set before
# each help as a terminal would): a process per help spent its time importing the CLI again.
HELP_ALL = """
import contextlib, io, json, os, sys
from vmcp_opt.cli import app

out = {}
for command, columns in json.loads(sys.argv[1]):
    os.environ["COLUMNS"] = str(columns)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            app([*command, "--help"], prog_name="python -m vmcp_opt")
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
    out[" ".join(command) + f"@{columns}"] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess[str]]:
    cases = json.dumps([[list(command), columns] for command in HELPED for columns in WIDTHS])
    done = subprocess.run([sys.executable, "-c", HELP_ALL, cases], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {key: subprocess.CompletedProcess([], *answer) for key, answer in json.loads(done.stdout).items()}


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("command", HELPED, ids=lambda command: " ".join(command) or "vmcp")
def test_help_shows_no_type_beside_a_flag_nor_a_python_type(
    command: tuple[str, ...], columns: int, helps: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """typer's rich help put `<bool>` beside every flag and `<list[str]>` beside repeatable options."""
    done = helps[" ".join(command) + f"@{columns}"]
    assert done.returncode == 0, done.stderr
    assert "--help" in done.stdout
    assert "<bool>" not in done.stdout and "list[" not in done.stdout, done.stdout
    if command == ("auth", "new-key"):
        text = one_line(done.stdout)
        for option in ("--subject <name>", "--group -g <group>", "--role -r <role>", "--scope -s <scope>"):
            assert re.search(re.escape(option).replace(r"\ ", r"[\s│]+"), text), option


# --- a per-tool rate limit reached through call_tool --------------------------------------------------------

LIMITED = {"per_tool": {"notes_whoami": {"rate": 0.001, "burst": 1, "per_caller": True}}}  # 1 call per 1000 s


@pytest.fixture(scope="module")
def limited_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("call-tool-limits")
    optimizer = {"enabled": True, "index_dir": str(directory / "index")}  # find_tool and call_tool
    config = write_config(
        directory, {"backends": [demo_backend("notes")], "optimizer": optimizer, "rate_limits": LIMITED}
    )
    with running_gateway(config) as gateway:
        yield gateway


def call_tool_message(request_id: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "call_tool", "arguments": {"tool_name": "notes_whoami", "arguments": {}}}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def answer_of(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = json.loads(response.text)
    return body


def through_call_tool(http: httpx2.Client, gateway: Gateway, request_id: int) -> dict[str, Any]:
    """notes_whoami through call_tool, from a 2025-11-25 session opened for this call alone."""
    return answer_of(http.post(gateway.url, json=call_tool_message(request_id), headers=open_session(http, gateway)))


@pytest.mark.slow
def test_new_sessions_through_call_tool_do_not_renew_a_per_tool_limit(limited_gateway: Gateway) -> None:
    """Before, a tool reached through call_tool was limited per session: a new session, a fresh bucket."""
    with client_from("127.0.0.21") as http:
        first = through_call_tool(http, limited_gateway, 1)
        assert "result" in first and not first["result"]["isError"], first
        for request_id in (2, 3):
            refused = through_call_tool(http, limited_gateway, request_id)
            assert refused["error"]["data"]["limit"] == "rate_limits.per_tool.notes_whoami", refused
    with client_from("127.0.0.22") as elsewhere:  # another caller: a bucket of its own
        assert "result" in through_call_tool(elsewhere, limited_gateway, 1)


@pytest.mark.slow
def test_a_direct_call_and_one_through_call_tool_share_the_callers_bucket(limited_gateway: Gateway) -> None:
    with client_from("127.0.0.23") as http:
        direct = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "notes_whoami", "arguments": {}},
        }
        assert "result" in answer_of(
            http.post(limited_gateway.url, json=direct, headers=open_session(http, limited_gateway))
        )
        refused = through_call_tool(http, limited_gateway, 2)
        assert refused["error"]["data"]["limit"] == "rate_limits.per_tool.notes_whoami", refused


@pytest.mark.slow
def test_a_new_unverified_credential_each_time_is_not_a_new_caller(limited_gateway: Gateway) -> None:
    """2026-07-28 requests without a session, each with an Authorization header of its own, which an anonymous
    gateway does not verify (the caller's id is a digest of it): still one client address, one bucket."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "call_tool"}
    with client_from("127.0.0.24") as http:
        answers = [
            answer_of(
                http.post(
                    limited_gateway.url,
                    json=call_tool_message(request_id, meta),
                    headers={**headers, "Authorization": f"Bearer made-up-{request_id}"},
                )
            )
            for request_id in (1, 2)
        ]
    assert "result" in answers[0] and not answers[0]["result"]["isError"], answers[0]
    assert answers[1]["error"]["data"]["limit"] == "rate_limits.per_tool.notes_whoami", answers[1]


@pytest.mark.slow
def test_the_sdk_client_is_refused_in_a_second_session_through_call_tool(limited_gateway: Gateway) -> None:
    async def main() -> None:
        arguments = {"tool_name": "notes_whoami", "arguments": {}}
        async with Client(limited_gateway.url) as client:  # from 127.0.0.1, the only test that uses it
            assert not (await client.call_tool("call_tool", arguments)).is_error
        async with Client(limited_gateway.url) as client:  # a new session
            with pytest.raises(MCPError) as refused:
                await client.call_tool("call_tool", arguments)
        data = refused.value.error.data
        assert isinstance(data, dict) and data["limit"] == "rate_limits.per_tool.notes_whoami"

    anyio.run(main)
