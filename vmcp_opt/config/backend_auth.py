"""`backends[].auth`: how the gateway authenticates to one backend, on its own or on a caller's behalf.

A leaf beside `config.py` (which imports it), like `config/workflows.py`: the section's models and checks.
Secrets are never written in the config: each is a `SecretRef` naming an environment variable or a file, read
when used (a file may be rotated without a restart). A plain string where a secret belongs is refused at load
with the field's path. A header's secret may not hold a control character (`SecretRef.read`): HTTP refuses it,
and the HTTP library's error would print the value escaped, past the exact-string masking of the logs.
Runtime: `vmcp_opt/backends/credentials.py` and `vmcp_opt/backends/token_client.py`; `env_secret` and
`client_basic_auth` serve the incoming side too (auth/introspection.py), so both read and send a secret alike.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

AuthType = Literal["none", "header", "oauth_client_credentials", "token_exchange"]
# Never forwarded from the client, whatever `passthrough_headers` says: credentials and hop-by-hop headers.
NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "mcp-session-id",
    }
)
LITERAL_REFUSED = "a literal secret is not allowed here; write {env: VARIABLE} or {file: PATH}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SecretRef(_Strict):
    """Where a secret is read from: exactly one of `env` (a variable's name) or `file` (a path)."""

    # The environment variable holding the value; surrounding whitespace is dropped.
    env: str | None = None
    # A file holding the value (relative to the config file's directory); surrounding whitespace is dropped.
    file: str | None = None
    # Written before the value, e.g. `"Bearer "` for an Authorization header; not a secret.
    prefix: str = ""
    _header: bool = PrivateAttr(default=False)  # an HTTP header's value (set by `BackendAuthConfig`)

    @model_validator(mode="before")
    @classmethod
    def _no_literal(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(LITERAL_REFUSED)
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self

    def read(self, base_dir: Path) -> str:
        """The secret itself (without `prefix`); `ValueError` naming the variable or file when it is missing,
        or, for a header's value (`prefix` included), when it holds a control character (CR, LF, NUL, TAB,
        DEL...): at load and at each use (a rotated file). A message never shows the value."""
        value = self._value(base_dir)
        if self._header:
            _refuse_control(self.prefix, "`prefix`")
            _refuse_control(value, self._source(base_dir))
        return value

    def _value(self, base_dir: Path) -> str:
        if self.env is not None:
            return env_secret(self.env)
        assert self.file is not None
        path = base_dir / self.file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{path} is empty")
        return value

    def _source(self, base_dir: Path) -> str:
        return f"environment variable {self.env}" if self.env is not None else str(base_dir / str(self.file))

    def where(self) -> str:
        return f"${self.env}" if self.env is not None else f"file {self.file}"


def env_secret(name: str) -> str:
    """The secret in the environment variable `name`, surrounding whitespace dropped as a file's is (a Kubernetes
    Secret made `--from-file` ends in a newline in both); `ValueError` naming the variable when it is unset or
    empty. Backends' secrets and the gateway's introspection secret are read alike."""
    value = os.environ.get(name, "").strip()
    if not value:
        state = "is empty" if name in os.environ else "is not set"
        raise ValueError(f"environment variable {name} {state}")
    return value


def client_basic_auth(client_id: str, secret: str) -> tuple[str, str]:
    """A client's id and secret as HTTP Basic's user and password, each form-urlencoded first (RFC 6749 §2.3.1):
    sent raw, a `+` in a secret reached a compliant server as a space (401 invalid_client) and a `%` as a broken
    escape (400), and a `:` in an id split it. An id and secret of letters, digits and `-._~` go unchanged."""
    return quote_plus(client_id, safe=""), quote_plus(secret, safe="")


def _refuse_control(text: str, whose: str) -> None:
    """HTTP refuses a control character in a header, and the HTTP library's error would print the value."""
    control = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise ValueError(f"{whose} holds a control character (U+{ord(control):04X}); a header value cannot carry one")


class BackendAuthConfig(_Strict):
    # none; header: static headers (HTTP) or environment variables (stdio) from secrets; oauth_client_credentials:
    # the gateway's own token for this backend; token_exchange: each caller's token exchanged (RFC 8693) for one
    # with this backend's audience, on a session of that caller's own.
    type: AuthType = "none"
    # header: headers sent with every request to an HTTP backend, each from a secret (which may not hold a
    # control character such as a line break).
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    # header: environment variables of a stdio backend's process, each from a secret.
    env: dict[str, SecretRef] = Field(default_factory=dict)
    # oauth_client_credentials, token_exchange: the token endpoint; or `issuer`, whose metadata names it.
    token_url: str | None = None
    # The authorization server's issuer URL, for discovery (RFC 8414 / OpenID) of the token endpoint.
    issuer: str | None = None
    # The gateway's client id at the token endpoint.
    client_id: str | None = None
    # The gateway's client secret (sent with HTTP Basic).
    client_secret: SecretRef | None = None
    # Scopes asked for.
    scopes: list[str] = Field(default_factory=list)
    # The backend's audience, sent as the `audience` parameter.
    audience: str | None = None
    # The backend's resource indicator (RFC 8707), sent as the `resource` parameter.
    resource: str | None = None
    # token_exchange: the `subject_token_type` the caller's token is sent as: `access_token` (RFC 8693's usual,
    # when unset) or `jwt`, for token endpoints that take only that (Google's STS, some Okta set-ups).
    subject_token_type: Literal["access_token", "jwt"] | None = None
    # Seconds before a token's expiry it is replaced; a token without `expires_in` is kept this long at most.
    refresh_before: float = Field(30.0, ge=0)
    # Seconds a token fetch may take in all (discovery included), and a call's wait for one another call runs.
    timeout: float = Field(10.0, gt=0)
    # Client request headers forwarded to this backend (never Authorization, Cookie or hop-by-hop ones).
    passthrough_headers: list[str] = Field(default_factory=list)

    @field_validator("headers", "env", mode="before")
    @classmethod
    def _secret_values(cls, value: Any) -> Any:
        if isinstance(value, dict):
            literal = [str(k) for k, v in value.items() if not isinstance(v, dict)]
            if literal:
                raise ValueError(f"{', '.join(literal)}: {LITERAL_REFUSED}")
        return value

    @field_validator("passthrough_headers")
    @classmethod
    def _forwardable(cls, value: list[str]) -> list[str]:
        refused = [name for name in value if name.lower() in NEVER_FORWARDED]
        if refused:
            raise ValueError(f"never forwarded: {', '.join(refused)} (credentials and hop-by-hop headers)")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _mark_headers(self) -> BackendAuthConfig:
        for ref in self.headers.values():
            ref._header = True
        return self

    @model_validator(mode="after")
    def _fields_of_type(self) -> BackendAuthConfig:
        if self.type == "header" and not (self.headers or self.env):
            raise ValueError("type header needs `headers` (HTTP backends) or `env` (stdio backends)")
        if self.type != "header" and (self.headers or self.env):
            raise ValueError("`headers` and `env` are for type header")
        oauth = self.type in ("oauth_client_credentials", "token_exchange")
        if oauth:
            if not (self.token_url or self.issuer):
                raise ValueError(f"type {self.type} needs `token_url` or `issuer`")
            if not (self.client_id and self.client_secret):
                raise ValueError(f"type {self.type} needs `client_id` and `client_secret`")
        if self.type == "token_exchange" and not (self.audience or self.resource):
            raise ValueError("type token_exchange needs the backend's `audience` or `resource`")
        if self.type != "token_exchange" and self.subject_token_type is not None:
            raise ValueError("`subject_token_type` is for type token_exchange (the caller's token it exchanges)")
        if not oauth and (self.token_url or self.issuer or self.client_id or self.client_secret):
            raise ValueError("`token_url`, `issuer`, `client_id` and `client_secret` are for the OAuth types")
        return self

    def secret_refs(self) -> list[SecretRef]:
        refs = [*self.headers.values(), *self.env.values()]
        return refs + ([self.client_secret] if self.client_secret is not None else [])

    def secret_values(self, base_dir: Path) -> list[str]:
        """Every configured secret that can be read now (to mask in logs)."""
        values = []
        for ref in self.secret_refs():
            try:
                values.append(ref.read(base_dir))
            except ValueError:
                continue
        return values

    def check(self, where: str, transport: str, base_dir: Path) -> list[str]:
        """Problems only known with the backend's transport and the environment: `where.field: reason` lines."""
        problems = []
        if transport == "stdio" and self.headers:
            problems.append(f"{where}.headers: a stdio backend takes `env`, not headers")
        if transport != "stdio" and self.env:
            problems.append(f"{where}.env: an HTTP backend takes `headers`, not env")
        if transport == "stdio" and self.type in ("oauth_client_credentials", "token_exchange"):
            problems.append(f"{where}.type: {self.type} needs an HTTP backend (streamable-http or sse)")
        if transport == "stdio" and self.passthrough_headers:
            problems.append(f"{where}.passthrough_headers: a stdio backend has no headers")
        named = [(f"headers.{k}", r) for k, r in self.headers.items()] + [(f"env.{k}", r) for k, r in self.env.items()]
        if self.client_secret is not None:
            named.append(("client_secret", self.client_secret))
        for field, ref in named:
            if ref.file is not None:
                ref.file = str((base_dir / ref.file).resolve())  # read later from anywhere
            try:
                ref.read(base_dir)
            except ValueError as exc:
                problems.append(f"{where}.{field}: {exc}")
        return problems
