"""ToolHive's inline Cedar policies as our policy file.

The policies are copied, not rewritten, apart from MCP method names written as actions (`Action::"tools/call"`,
as ToolHive's own example does), which become our action names. What ToolHive's entity model has and ours has
not (`Client::` principals) is reported, and the policy kept as written: the gateway then refuses to start on it
until it is fixed, which fails closed where dropping it would open every tool. `principal.claim_<name>` and
`context.arg_<name>` are ours too (auth/cedar_schema.py), but our schema makes them optional: a read needs a `has`
test first, so one without it is reported the same way.
"""

from __future__ import annotations

import re
from typing import Any

from vmcp_opt.importers.findings import Findings

_ACTIONS = {
    "tools/call": "call_tool",
    "tools/list": "list_tools",
    "prompts/get": "get_prompt",
    "prompts/list": "list_prompts",
    "resources/read": "read_resource",
    "resources/list": "list_resources",
}
# The policy file for an empty policy list: Cedar's default (deny), written out so the gateway starts denying.
DENY_ALL = (
    "// Imported from a ToolHive authz with no policies: Cedar denies what no policy permits.\n"
    "forbid(principal, action, resource);\n"
)
_UNSUPPORTED = ((re.compile(r"\bClient::"), "`Client::` principals: ours are `User::` (and `Group::`)"),)
# A claim or argument a policy reads: ours only behind a `has` test of the same name (Cedar's validator).
_OPTIONAL_READ = re.compile(r"\.\s*((?:claim|arg)_\w+)")


def authorization(authz: dict[str, Any], config: dict[str, Any], findings: Findings) -> str | None:
    """Cedar text for the policy file (None when there is none); claim names go into `config`."""
    if authz.get("type", "cedar") != "cedar":
        findings.skip("incomingAuth.authz.type", f"{authz.get('type')!r}: only Cedar policies are supported")
        return None
    claims = config.setdefault("auth", {}).setdefault("incoming", {})
    for theirs, ours in (("groupClaimName", "groups"), ("roleClaimName", "roles")):
        if authz.get(theirs):
            claims.setdefault("claims", {})[ours] = authz[theirs]
    for key in ("entitiesJson", "primaryUpstreamProvider", "groupEntityType"):
        if authz.get(key):
            findings.skip(f"incomingAuth.authz.{key}", "not supported")
    policies = [str(p) for p in authz.get("policies") or []]
    for index, policy in enumerate(policies):
        for pattern, why in _UNSUPPORTED:
            if pattern.search(policy):
                findings.skip(f"incomingAuth.authz.policies[{index}]", f"{why}; kept as written, fix it by hand")
        for name in sorted(_unguarded(policy)):
            findings.skip(
                f"incomingAuth.authz.policies[{index}]",
                f"`{name}` read without `has {name}` first, which our policy validator requires (the attribute is "
                "optional); kept as written, fix it by hand",
            )
    if not policies:  # Cedar denies what no policy permits: ToolHive serves this gateway to no one
        findings.skip(
            "incomingAuth.authz.policies",
            "none given, so ToolHive's Cedar permits nothing; the policy file written forbids everything too "
            "(write the policies that permit what callers need)",
        )
        return DENY_ALL
    text = "\n\n".join(p.strip() for p in policies) + "\n"
    return re.sub(r'Action::"([a-z]+/[a-z]+)"', lambda m: f'Action::"{_ACTIONS.get(m[1], m[1])}"', text)


def _unguarded(policy: str) -> set[str]:
    """The `claim_*` / `arg_*` attributes `policy` reads with no `has` test of the same name anywhere in it."""
    read = set(_OPTIONAL_READ.findall(policy))
    return {name for name in read if not re.search(rf"\bhas\s+{re.escape(name)}\b", policy)}
