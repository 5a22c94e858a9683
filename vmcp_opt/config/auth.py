"""Who may connect (incoming authentication) and what each caller may do (authorization)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator, model_validator

from vmcp_opt.config.base import _Strict

LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
MAX_AUDIENCES = 32  # `oauth.audiences` entries: a few names for one gateway, never a list to scan per token
MAX_AUDIENCE_LENGTH = 1024
# Signing algorithms a JWT access token may use: asymmetric only, so a public key can never verify an
# HMAC token made with it (no `none`, no HS*).
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ClaimNames(_Strict):
    """Where a token's claims (or an API key's entry) put who the caller is (dotted paths reach nested claims)."""

    # The caller's subject: who the caller is for sessions, Cedar and rate limits. A token without this claim
    # is refused (401 invalid_token naming it) when it has a `sub`: a user's token lacking the claim chosen for
    # identity. Only a token with neither (a client acting for itself: client credentials) is the client id.
    subject: str = "sub"
    # Groups: a list of strings, or one space- or comma-separated string.
    groups: str = "groups"
    # Roles: as groups (e.g. `realm_access.roles` for Keycloak).
    roles: str = "roles"
    # The OAuth client the token was issued to (`azp` is used when this claim is absent).
    client_id: str = "client_id"
    # Granted scopes: a space-separated string or a list.
    scopes: str = "scope"


class OAuthConfig(_Strict):
    """The gateway as an OAuth 2.1 resource server (the MCP authorization specification)."""

    # The authorization server's issuer URL; tokens must carry exactly this `iss`. Its JWKS is found from its
    # metadata: `/.well-known/oauth-authorization-server`, then `/.well-known/openid-configuration`, the first
    # that answers this issuer's metadata with a `jwks_uri` (an HTML page or another issuer's is passed over).
    issuer: str | None = None
    # This gateway's resource (RFC 9728, RFC 8707): the http(s) URL clients connect to, whose protected-resource
    # metadata the gateway publishes, and, unless `audiences` is set, the `aud` tokens must carry (with or without
    # a trailing slash). Unset: `http://<host>:<port><path>` of `server` (set it when clients reach the gateway
    # through another name, a proxy or https).
    resource: str | None = None
    # The audiences a token may carry instead of `resource`, for authorization servers that issue another one
    # (`api://vmcp`, a client id: Entra ID, Keycloak, Okta): a token whose `aud` (a string or a list) holds any of
    # them is accepted, each compared exactly. Set, it replaces `resource` as the audience (list that URL too to
    # accept both); the metadata still publishes `resource`. Unset: `resource`. At most 32; a token without `aud`
    # is always refused, and an empty list is an error, never "any audience".
    audiences: list[str] | None = None
    # The issuer's JWKS, instead of discovering it from the issuer's metadata.
    jwks_url: str | None = None
    # Signing algorithms accepted (asymmetric only).
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    # Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    clock_skew: float = Field(30.0, ge=0, le=300)
    # A token signed with a key id the cached JWKS lacks refreshes it, at most once per this many seconds (at
    # least 1: any client can send made-up key ids); meanwhile such a token is answered 503 with Retry-After, not
    # 401 (a key just rotated in works once the refresh is allowed).
    jwks_refresh_interval: float = Field(60.0, ge=1)
    # Seconds a fetched JWKS is used before it is fetched again.
    jwks_max_age: float = Field(3600.0, gt=0)
    # Seconds one request to the authorization server may take; a signing-key refresh (discovery and the JWKS
    # together) and a token's wait for it take at most this in all.
    timeout: float = Field(5.0, gt=0)
    # Scopes every request must carry (a token without them gets 403 insufficient_scope).
    required_scopes: list[str] = Field(default_factory=list)
    # Scopes advertised in the protected-resource metadata (default: `required_scopes`).
    scopes_supported: list[str] = Field(default_factory=list)
    # RFC 7662 token introspection endpoint: tokens that are not JWTs (opaque) are checked there, one question
    # per token however many requests bring it at once. One longer than 8192 characters is refused (401) unasked.
    introspection_url: str | None = None
    # The gateway's own client id at the authorization server, for introspection.
    client_id: str | None = None
    # The environment variable holding that client's secret (never the secret itself in a file).
    client_secret_env: str | None = None
    # Seconds an introspected token's answer is reused (never past its `exp`).
    introspection_cache: float = Field(60.0, ge=0)
    # Introspection requests a second (per replica) for tokens the gateway holds no answer for: a client sending
    # made-up opaque tokens could otherwise make the gateway ask the authorization server at the client's own
    # request rate. Past it such a token is answered 503 temporarily_unavailable (the client retries) without
    # asking (Retry-After). Re-checks of tokens the server called active are never refused, so valid tokens in
    # use are not slowed; a valid token's first use can be, while many addresses' made-up ones use up the rate
    # (one address's stop at `introspection_rate_per_address`).
    introspection_rate: float = Field(20.0, gt=0)
    # Introspection requests for unknown tokens that may go at once above `introspection_rate` (after a quiet
    # spell: a restart's clients bringing their tokens back).
    introspection_burst: int = Field(100, ge=1)
    # Introspection requests a second for unknown tokens from one client address (the peer's, or
    # X-Forwarded-For's behind `server.trusted_proxies`), within `introspection_rate`: one address sending made-up
    # tokens is answered 429 (with Retry-After) past it, and leaves the rest of the rate to other addresses' new
    # tokens. Per replica; the latest 4096 addresses are tracked. Clients behind a proxy not in trusted_proxies all
    # have its address: raise this (and the burst) to the total's for them.
    introspection_rate_per_address: float = Field(4.0, gt=0)
    # Introspection requests for unknown tokens one client address may make at once above
    # `introspection_rate_per_address`.
    introspection_burst_per_address: int = Field(20, ge=1)

    @field_validator("resource")
    @classmethod
    def _reachable_resource(cls, value: str | None) -> str | None:
        """The URL clients connect to (RFC 9728): `serve` publishes the protected-resource metadata under it, and
        tokens must carry it as their `aud`. Checked here so `validate` and `serve` agree. An audience that is no
        such URL (`api://vmcp`) cannot be published, and no other setting names the audience tokens carry."""
        if value is None:
            return value
        problem = _http_url_problem(value) or _unpublishable(value)
        if problem:
            raise ValueError(
                f"{problem}; set it to the URL clients reach the gateway at, such as https://vmcp.example.com/mcp "
                "(http only on loopback or in development); an audience your authorization server issues that is "
                "no such URL (such as api://vmcp) goes in `audiences`"
            )
        return value

    @field_validator("audiences")
    @classmethod
    def _exact_audiences(cls, value: list[str] | None) -> list[str] | None:
        """Checked at load: an empty list would refuse every token (never read as "any audience"), and a blank or
        padded entry matches no token an authorization server issues."""
        if value is None:
            return value
        if not value:
            raise ValueError("an empty list accepts no token; leave `audiences` unset to accept tokens for `resource`")
        if len(value) > MAX_AUDIENCES:
            raise ValueError(f"at most {MAX_AUDIENCES} audiences, not {len(value)}")
        for index, audience in enumerate(value):
            problem = _audience_problem(audience)
            if problem:
                raise ValueError(f"[{index}]: {problem}")
        return value

    @field_validator("issuer", "jwks_url", "introspection_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        """Checked at load: a URL without its scheme would otherwise be a 503 on every request, found at the first."""
        problem = None if value is None else _http_url_problem(value, "https://login.example.com")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"not allowed: {bad}; choose from {list(JWT_ALGORITHMS)} (no `none`, no HS*)")
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value

    @model_validator(mode="after")
    def _introspection_client(self) -> OAuthConfig:
        if self.introspection_url and not (self.client_id and self.client_secret_env):
            raise ValueError("introspection_url needs `client_id` and `client_secret_env` (the gateway's credentials)")
        return self


def _http_url_problem(value: str, example: str | None = None) -> str | None:
    """What keeps `value` from being an absolute http(s) URL without a fragment, or None."""
    shown = repr(value) if "@" not in value else "the URL given"  # user:password@ is never echoed
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"{shown} is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an absolute http(s) URL{f' such as {example}' if example else ''}, not {shown}"
    if parts.fragment or value.endswith("#"):
        return f"{shown}: a URL with a `#` fragment is never an issuer, an endpoint or a resource"
    return None


def _audience_problem(audience: str) -> str | None:
    """What keeps `audience` from ever equalling a token's `aud` as issued, or None."""
    if not audience.strip():
        return "an audience must not be empty"
    if audience != audience.strip():
        return f"{audience!r} has surrounding whitespace, which no issued `aud` has"
    if len(audience) > MAX_AUDIENCE_LENGTH:
        return f"an audience is at most {MAX_AUDIENCE_LENGTH} characters, not {len(audience)}"
    if any(ord(char) < 32 or ord(char) == 127 for char in audience):
        return f"{audience!r} holds a control character"
    return None


def _unpublishable(resource: str) -> str | None:
    """Why the metadata URL cannot be built from `resource` as `serve` builds it (server/http.py), or None."""
    if "@" in urlsplit(resource).netloc:
        return "the URL given holds credentials (user:password@), which the public metadata would show"
    if "\\" in resource:  # a browser's parser reads it as `/`: the host would not be the one written
        return f"{resource!r}: a backslash is not part of a URL"
    try:
        AnyHttpUrl(resource)
    except ValidationError as exc:
        return f"{resource!r} is not a URL: {exc.errors()[0]['msg']}"
    return None


class ApiKeysConfig(_Strict):
    """API keys sent as bearer tokens, stored only as SHA-256 hashes (`vmcp auth new-key` makes one)."""

    # A YAML or JSON file `{keys: [{sha256: <hex>, subject: ..., groups: [...], roles: [...], scopes: [...]}]}`
    # (`vmcp auth new-key` prints an entry), re-read off the event loop when it changes (rotation and revocation
    # without a restart); at most 8 MiB (about 45,000 entries; JSON parses many times faster than YAML); relative
    # to the config file's directory. Refused (fail-closed, as an unreadable file) when others may write it (o+w)
    # or its directory (o+w without the sticky bit); group-writable or another user's than the gateway's or
    # root's: a warning.
    file: str | None = None
    # An environment variable holding the same entries as a JSON list (read at start).
    env: str | None = None


class IncomingAuthConfig(_Strict):
    """Who may connect (vmcp_opt/auth/): over HTTP one of `mode`; over stdio the local OS user is the caller."""

    # anonymous: anyone who reaches the port (loopback only unless `allow_anonymous_remote`); oauth: JWT access
    # tokens from `oauth.issuer`; api_keys: keys from `api_keys`.
    mode: Literal["anonymous", "oauth", "api_keys"] = "anonymous"
    # Serve anonymously on a non-loopback address (logged as a warning at every start).
    allow_anonymous_remote: bool = False
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    api_keys: ApiKeysConfig = Field(default_factory=ApiKeysConfig)
    claims: ClaimNames = Field(default_factory=ClaimNames)

    @model_validator(mode="after")
    def _mode_settings(self) -> IncomingAuthConfig:
        if self.mode == "oauth" and not self.oauth.issuer:
            raise ValueError("mode oauth needs `oauth.issuer`")
        if self.mode == "api_keys" and not (self.api_keys.file or self.api_keys.env):
            raise ValueError("mode api_keys needs `api_keys.file` or `api_keys.env`")
        return self


class AuthorizationConfig(_Strict):
    """What each caller may see and call: Cedar policies (vmcp_opt/auth/cedar.py); unset, everything."""

    # A Cedar policy file; relative to the config file's directory. A file that does not parse, or whose policies
    # do not validate against the gateway's schema (`vmcp auth schema`: a misspelt type or attribute), stops the
    # start; so does a file others may write (o+w, or in a directory o+w without the sticky bit); group-writable or
    # another user's: a warning. Policies may read the caller's token claims (`principal.claim_<name>`) and a call's
    # arguments (`context.arg_<name>`), each tested with `has` first.
    policies: str | None = None
    # Decisions kept per (caller, action, target); a caller's visible tool set is kept per catalogue.
    cache_size: int = Field(100_000, ge=0)


class AuthConfig(_Strict):
    incoming: IncomingAuthConfig = Field(default_factory=IncomingAuthConfig)
    authorization: AuthorizationConfig = Field(default_factory=AuthorizationConfig)
    # Refuse an API keys or Cedar policy file others could change (o+w, in a directory others may write without
    # the sticky bit, or another user's file in one they may write). Off: a warning instead, for file systems
    # whose modes mean nothing and ignore chmod (WSL drvfs without metadata, vboxsf, a Windows bind mount).
    strict_file_modes: bool = True
