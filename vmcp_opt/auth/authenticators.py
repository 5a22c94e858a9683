"""The configured way to authenticate HTTP callers (`auth.incoming.mode`), built once at start."""

from __future__ import annotations

import logging
import os
from typing import Protocol

from vmcp_opt.auth import errors
from vmcp_opt.auth.api_keys import ApiKeyFileError, ApiKeys
from vmcp_opt.auth.identity import Identity
from vmcp_opt.config import VmcpConfig

logger = logging.getLogger(__name__)


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Identity:
        """The identity the bearer credential proves; raises `AuthError` (auth/errors.py) when it proves none."""
        ...


class AuthSetupError(Exception):
    """Authentication is configured but cannot work (an unreadable keys file); the start stops."""


def build_authenticator(config: VmcpConfig) -> Authenticator | None:
    """None for anonymous mode; a `TokenVerifier` or `ApiKeys` otherwise. `AuthSetupError` when unusable."""
    incoming = config.auth.incoming
    if incoming.mode == "oauth":
        from vmcp_opt.auth.tokens import TokenVerifier  # pyjwt (and its crypto) loads only for OAuth

        _check_introspection_secret(incoming.oauth.introspection_url, incoming.oauth.client_secret_env)
        return TokenVerifier(incoming.oauth, config.resource_uri(), incoming.claims)
    if incoming.mode == "api_keys":
        settings = incoming.api_keys
        env_value = None
        if settings.env is not None:
            env_value = os.environ.get(settings.env)
            if env_value is None:
                raise AuthSetupError(f"auth.incoming.api_keys.env: ${settings.env} is not set")
        try:
            file = config.resolve_path(settings.file) if settings.file else None
            keys = ApiKeys(file, env_value, strict_modes=config.auth.strict_file_modes)
        except ApiKeyFileError as exc:
            raise AuthSetupError(f"auth.incoming.api_keys: {exc}") from None
        logger.info("auth: API keys (%d known)", len(keys))
        return keys
    return None


def required_scopes(config: VmcpConfig) -> list[str]:
    """The scopes every request's token must carry (`oauth.required_scopes`; none outside OAuth mode)."""
    incoming = config.auth.incoming
    return list(incoming.oauth.required_scopes) if incoming.mode == "oauth" else []


def check_scopes(identity: Identity, required: list[str]) -> None:
    """403 `insufficient_scope` naming the required scopes unless the identity has them all: the one check the
    gateway (server/authentication.py) and `vmcp auth check` both make, so the latter approves no token the
    gateway refuses."""
    if any(scope not in identity.scopes for scope in required):
        raise errors.insufficient_scope(required)


def _check_introspection_secret(introspection_url: str | None, secret_env: str | None) -> None:
    """The process's environment cannot change while it serves: without the secret every opaque token would
    be a 503 until a restart, so the start stops (and `vmcp validate` says so) instead."""
    # Stripped as it is read when used (config/backend_auth.py `env_secret`): a blank secret is no secret.
    if introspection_url and secret_env and not os.environ.get(secret_env, "").strip():
        state = "is empty" if secret_env in os.environ else "is not set"
        raise AuthSetupError(
            f"auth.incoming.oauth.client_secret_env: ${secret_env} {state} "
            "(the gateway's client secret, for token introspection)"
        )
