"""`vmcp auth`: the operator's tools for authentication and authorization.

- `vmcp auth new-key --subject alice --group dev --role auditor --scope notes:read`: a fresh API key, printed
  once, and the entry (its hash, the caller's groups, roles and scopes) to add to `auth.incoming.api_keys.file`,
  checked as the gateway checks that file.
- `vmcp auth schema`: the Cedar schema every policy is validated against at load (auth/cedar_schema.py `SCHEMA`).
- `vmcp auth check -c vmcp.yaml` with a token or key (from `--credential-env`, default `VMCP_CREDENTIAL`, so
  it stays out of the shell history) or `--local-user`: authenticates it exactly as the gateway would (its
  `oauth.required_scopes` too), then connects to the backends once and says which tools the caller may list
  and call under the Cedar policy.
  `--host`/`--port` as given to `serve`: without `oauth.resource` they make the audience a token must name.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vmcp_opt.console import OutputConsole, PlainFlagsGroup, literal

# What each command needs is imported when it runs: `vmcp auth --help` (and `vmcp validate`, which asks
# `auth_problems`) need not load the router and the MCP SDK it brings (half a second).
if TYPE_CHECKING:
    from vmcp_opt.auth.identity import Identity
    from vmcp_opt.config import VmcpConfig
    from vmcp_opt.routing.policy import Policy


auth_app = typer.Typer(
    cls=PlainFlagsGroup, no_args_is_help=True, help="API keys, and who a credential is and what it may do."
)
out = OutputConsole()
err = OutputConsole(stderr=True)


@auth_app.command("new-key")
def new_key_command(
    subject: Annotated[str, typer.Option(metavar="<name>", help="Who the key belongs to (the caller's subject).")],
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", metavar="<group>", help="A group of the caller (Cedar `Group`); repeat."),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", "-r", metavar="<role>", help="A role of the caller (`principal.roles`); repeat."),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope", "-s", metavar="<scope>", help="A scope granted to the key (`principal.scopes`); repeat."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="<label>", help="A label for the key (shown as the client id).")
    ] = None,
) -> None:
    """A new API key: the key is printed once; the gateway stores only the entry's hash.

    Several names may also be given in one value, separated by commas or spaces (`--group dev,ops`)."""
    from vmcp_opt.auth.api_keys import ApiKeyFileError, new_key, parse_entries

    if not subject.strip():  # the gateway refuses such an entry at start (`keys[i].subject`)
        err.print("--subject: give who the key belongs to (e.g. --subject alice); it cannot be empty", highlight=False)
        raise typer.Exit(2)
    lists = {
        "groups": _names("--group", group, "dev"),
        "roles": _names("--role", role, "auditor"),
        "scopes": _names("--scope", scope, "notes:read"),
    }
    key, digest = new_key()
    entry: dict[str, Any] = {"sha256": digest, "subject": subject, **lists}
    if name:
        entry["name"] = name
    try:  # the same check the gateway makes of its keys file, so the entry printed is one it accepts
        parse_entries([entry], "the new entry")
    except ApiKeyFileError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    out.print(f"key (shown once, give it to {subject}): {key}", markup=False, highlight=False)
    out.print("entry for auth.incoming.api_keys.file (under `keys:`):", highlight=False)
    out.print(f"  - {json.dumps(entry)}", markup=False, highlight=False)


@auth_app.command("schema")
def schema_command() -> None:
    """The Cedar schema policies are validated against at load (JSON): the entities and actions the gateway sends."""
    from vmcp_opt.auth.cedar_schema import SCHEMA  # cedarpy loads only for the commands that need it

    out.print(json.dumps(SCHEMA, indent=2), markup=False, highlight=False)


def _names(option: str, given: list[str] | None, example: str) -> list[str]:
    """Each value of a repeated option, split on commas and spaces as the keys file splits a string; an
    empty one is refused (it would be dropped, and the caller would silently lack it)."""
    names: list[str] = []
    for value in given or []:
        parts = value.replace(",", " ").split()
        if not parts:
            err.print(f"{option}: an empty value; give a name (e.g. {option} {example})", markup=False, highlight=False)
            raise typer.Exit(2)
        names.extend(parts)
    return list(dict.fromkeys(names))  # each once, in the order given


def check(
    load: Any,
    credential_env: str,
    local: bool,
) -> None:
    """Body of `vmcp auth check` (registered by cli.py, which owns config loading)."""
    import anyio
    from rich.table import Table

    from vmcp_opt.auth import Caller
    from vmcp_opt.auth.identity import local_user
    from vmcp_opt.routing.policy import Target

    config: VmcpConfig = load()
    if local:
        identity: Identity | None = local_user()
    else:
        credential = os.environ.get(credential_env)
        if not credential:
            err.print(f"set ${credential_env} to the token or API key to check (or pass --local-user)")
            raise typer.Exit(2)
        identity = _authenticate(config, credential.removeprefix("Bearer ").strip())
    assert identity is not None
    caller = Caller("check", identity.method, "2025-11-25", **identity.caller_fields())
    out.print(
        f"caller: subject={identity.subject!r} via {identity.method.value}; groups={sorted(identity.groups)} "
        f"roles={sorted(identity.roles)} scopes={sorted(identity.scopes)} client_id={identity.client_id!r}",
        markup=False,
        highlight=False,
    )
    policy = _policy(config)
    from vmcp_opt.probe import collect_catalog

    catalog = anyio.run(collect_catalog, config)
    table = Table(title=literal(f"tools for {identity.subject}"))  # a token's claim
    for column in ("tool", "backend", "listed", "callable", "why not"):
        table.add_column(column)
    listed = callable_ = 0
    for routed in catalog.tools.values():
        annotations = routed.tool.annotations
        can_list = policy.decide(caller, Target("tool", routed.name, routed.backend, "list", annotations))
        can_call = policy.decide(caller, Target("tool", routed.name, routed.backend, "use", annotations))
        shown = can_list.allowed and can_call.allowed
        listed += shown
        callable_ += can_call.allowed
        reason = "" if shown else (can_call.reason if not can_call.allowed else can_list.reason)
        table.add_row(literal(routed.name), routed.backend, _yes(shown), _yes(can_call.allowed), literal(reason))
    out.print(table)
    out.print(f"{listed} of {len(catalog.tools)} tools listed, {callable_} callable", highlight=False)


def _authenticate(config: VmcpConfig, credential: str) -> Identity:
    import anyio

    from vmcp_opt.auth.authenticators import AuthSetupError, build_authenticator, check_scopes, required_scopes
    from vmcp_opt.auth.errors import AuthError

    try:
        authenticator = build_authenticator(config)
    except AuthSetupError as exc:
        err.print(f"cannot authenticate: {exc}", markup=False)
        raise typer.Exit(2) from None
    if authenticator is None:
        err.print("auth.incoming.mode is anonymous: every HTTP caller is anonymous (nothing to check)")
        raise typer.Exit(2)

    async def verify() -> Identity:
        try:
            identity = await authenticator.authenticate(credential)
            check_scopes(identity, required_scopes(config))  # as the gateway checks every request
            return identity
        finally:
            close = getattr(authenticator, "aclose", None)  # the introspection client, with OAuth
            if close is not None:
                await close()

    try:
        return anyio.run(verify)
    except AuthError as refused:
        err.print(f"refused ({refused.status} {refused.error or 'unauthorized'}): {refused.description}", markup=False)
        raise typer.Exit(1) from None


def _policy(config: VmcpConfig) -> Policy:
    from vmcp_opt.gateway import load_policy
    from vmcp_opt.routing.policy import AllowAll, PolicyLoadError

    try:
        return load_policy(config) or AllowAll()
    except PolicyLoadError as exc:
        err.print(f"auth.authorization.policies: {exc}", markup=False)
        raise typer.Exit(2) from None


def auth_problems(config: VmcpConfig) -> list[str]:
    """What would stop the start in `auth`: an unreadable keys file, a policy that does not load (`vmcp validate`)."""
    from vmcp_opt.auth.authenticators import AuthSetupError, build_authenticator

    problems = []
    try:
        build_authenticator(config)
    except AuthSetupError as exc:
        problems.append(str(exc))
    if config.auth.authorization.policies is None:
        return problems  # no policy to load (load_policy's None): the gateway's module, the whole server, unloaded
    from vmcp_opt.gateway import load_policy
    from vmcp_opt.routing.policy import PolicyLoadError

    try:
        load_policy(config)
    except PolicyLoadError as exc:
        problems.append(f"auth.authorization.policies: {exc}")
    return problems


def _yes(allowed: bool) -> str:
    return "[green]yes[/]" if allowed else "[red]no[/]"
