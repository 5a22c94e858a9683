"""The configured way to authenticate HTTP callers (`auth.incoming.mode`), built once at start."""

from __future__ import annotations

import logging
import os
from typing import Protocol

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

        return TokenVerifier(incoming.oauth, config.resource_uri(), incoming.claims)
    if incoming.mode == "api_keys":
        settings = incoming.api_keys
        env_value = None
        if settings.env is not None:
            env_value = os.environ.get(settings.env)
            if env_value is None:
                raise AuthSetupError(f"auth.incoming.api_keys.env: ${settings.env} is not set")
        try:
            keys = ApiKeys(config.resolve_path(settings.file) if settings.file else None, env_value)
        except ApiKeyFileError as exc:
            raise AuthSetupError(f"auth.incoming.api_keys: {exc}") from None
        logger.info("auth: API keys (%d known)", len(keys))
        return keys
    return None
