"""A verified identity: what authentication learned about a caller, before admission makes the `Caller`.

Authenticators (tokens, API keys, the local OS user) each produce an `Identity`; the HTTP transport puts it
in the request's ASGI scope and admission copies it into the `Caller`. The claim names that hold groups,
roles, scopes and the client id are configurable (`auth.incoming.claims`).
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vmcp_opt.auth.caller import Identification
from vmcp_opt.config import ClaimNames

# Where the HTTP transport leaves the verified identity for admission (the request's ASGI scope).
SCOPE_KEY = "vmcp.identity"
# A UTF-16 surrogate code point: valid as a JSON escape (`"\\ud800"`), yet no Unicode text holds one alone, and
# encoding it as UTF-8 raises (a subject holding one crashed every call that keyed on it).
_SURROGATE = re.compile("[\ud800-\udfff]")


class BearerToken:
    """The caller's own verified token, for RFC 8693 exchange towards a backend (`backends[].auth`); never
    shown: its repr and str are a mask, and it is not part of an identity's equality."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "BearerToken(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Identity:
    subject: str
    method: Identification
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Unix time the credential stops being valid (a token's `exp`), when it has one.
    expires_at: float | None = None
    # The credential itself, set by the HTTP transport for token exchange.
    token: BearerToken | None = field(default=None, repr=False, compare=False)

    def caller_fields(self) -> dict[str, Any]:
        """The `Caller` fields this identity fills."""
        return {
            "subject": self.subject,
            "groups": self.groups,
            "roles": self.roles,
            "client_id": self.client_id,
            "scopes": self.scopes,
            "claims": self.claims,
            "token": self.token,
        }


def from_claims(
    claims: Mapping[str, Any],
    names: ClaimNames,
    method: Identification,
) -> Identity:
    """The identity a token's (or an API key entry's) claims describe. `ValueError` without a subject, with an
    `exp` that is not a number, or with a claim the identity is made of that is not valid Unicode text."""
    for name in (names.subject, names.client_id, "azp", names.groups, names.roles, names.scopes):
        refuse_lone_surrogates(name, claim(claims, name))
    client_id = claim(claims, names.client_id)
    if not isinstance(client_id, str):
        client_id = claims.get("azp") if isinstance(claims.get("azp"), str) else None
    expires = numeric_date(claims, "exp")
    return Identity(
        subject=subject_of(claims, names, client_id),
        method=method,
        groups=string_set(claim(claims, names.groups)),
        roles=string_set(claim(claims, names.roles)),
        client_id=client_id,
        scopes=string_set(claim(claims, names.scopes)),
        claims=MappingProxyType(dict(claims)),
        expires_at=expires,
    )


def subject_of(claims: Mapping[str, Any], names: ClaimNames, client_id: str | None) -> str:
    """The caller's subject: the configured claim; the client id only for a client acting for itself (no `sub`
    at all: client credentials, RFC 9068 §2.2). A user's token (it has a `sub`) without the configured claim is
    refused rather than given the client id: every such user of one client would be one caller, sharing its
    sessions, its Cedar principal and its rate limits. `ValueError` saying which claim is missing or unfit."""
    subject = claim(claims, names.subject)
    if isinstance(subject, str) and subject:
        return subject
    if subject is not None:
        raise ValueError(f"a `{names.subject}` claim that is not a non-empty string")
    if claims.get("sub") is not None:  # only when the configured claim is another one
        raise ValueError(f"no `{names.subject}` claim (auth.incoming.claims.subject: the caller's identity)")
    if client_id:
        return client_id
    raise ValueError(f"no `{names.subject}` claim")


def refuse_lone_surrogates(name: str, value: Any) -> None:
    """`ValueError` naming the claim when `value` (a string, or a list of them) holds a lone surrogate: refused
    whole rather than the name dropped, since a dropped group is a caller the policy silently takes for another."""
    texts = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(text, str) and _SURROGATE.search(text) for text in texts):
        raise ValueError(f"a `{name}` claim that is not valid Unicode text (a lone UTF-16 surrogate)")


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim (`exp`, `nbf`) as PyJWT reads it (`int(value)`: a number or a string of an integer), so a
    token PyJWT accepted expires here too. None when absent; `ValueError` for anything else."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(int(value))
        except (ValueError, OverflowError):
            pass
    raise ValueError(f"a `{name}` claim that is not a number")


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`); None when any step is missing."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def string_set(value: Any) -> frozenset[str]:
    """A list of strings, or one space- or comma-separated string, as a set; anything else is empty."""
    if isinstance(value, str):
        return frozenset(part for part in value.replace(",", " ").split() if part)
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(item for item in value if isinstance(item, str) and item)
    return frozenset()


def local_user() -> Identity:
    """The OS user running this process, with the names of its groups: the caller of a stdio gateway."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        name = f"uid:{os.getuid()}"
    groups: set[str] = set()
    try:
        import grp  # not on Windows
    except ImportError:
        return Identity(subject=name, method=Identification.SESSION)
    for gid in {os.getgid(), *os.getgroups()}:
        try:
            groups.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            groups.add(str(gid))
    return Identity(subject=name, method=Identification.SESSION, groups=frozenset(groups))
