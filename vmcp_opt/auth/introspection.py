"""Opaque access tokens checked at the authorization server (RFC 7662 token introspection).

Used for a token that is not a JWT when `oauth.introspection_url` is set. The gateway authenticates as its own
client (`client_id`, secret from `client_secret_env`), and accepts only an `active` token whose `iss` (when
given) is the issuer, whose `aud` names this gateway's resource (RFC 8707: required, so a token for another
server is refused) and whose `exp`/`nbf` hold with the configured skew. Answers are reused for
`introspection_cache` seconds, never past the token's expiry.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx2

from vmcp_opt.auth import errors
from vmcp_opt.auth.caller import Identification
from vmcp_opt.auth.identity import Identity, from_claims, string_set
from vmcp_opt.config import ClaimNames, OAuthConfig

CACHE_SIZE = 10_000


class Introspection:
    def __init__(
        self,
        settings: OAuthConfig,
        audiences: list[str],
        claims: ClaimNames,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.introspection_url and settings.client_id and settings.client_secret_env
        self.settings = settings
        self.url = settings.introspection_url
        self.audiences = set(audiences)
        self.claims = claims
        self.clock = clock
        self._answers: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()

    def _secret(self) -> str:
        name = self.settings.client_secret_env
        assert name is not None
        secret = os.environ.get(name)
        if not secret:
            raise errors.unavailable(f"cannot introspect tokens: ${name} is not set")
        return secret

    async def authenticate(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        cached = self._answers.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        answer = await self._ask(token)
        identity = self._check(answer, now)
        until = now + self.settings.introspection_cache
        if identity.expires_at is not None:
            until = min(until, identity.expires_at)
        self._answers[digest] = (until, identity)
        if len(self._answers) > CACHE_SIZE:
            self._answers.popitem(last=False)
        return identity

    async def _ask(self, token: str) -> dict[str, Any]:
        assert self.settings.client_id is not None
        try:
            async with httpx2.AsyncClient(timeout=self.settings.timeout, follow_redirects=False) as client:
                response = await client.post(
                    self.url,
                    data={"token": token, "token_type_hint": "access_token"},
                    auth=(self.settings.client_id, self._secret()),
                    headers={"Accept": "application/json"},
                )
        except httpx2.HTTPError as exc:
            raise errors.unavailable(f"token introspection failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise errors.unavailable(f"token introspection answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise errors.unavailable("token introspection answered something other than JSON") from None
        if not isinstance(answer, dict):
            raise errors.unavailable("token introspection answered something other than an object")
        return answer

    def _check(self, answer: dict[str, Any], now: float) -> Identity:
        skew = self.settings.clock_skew
        if answer.get("active") is not True:
            raise errors.invalid_token("the token is not active (unknown, expired or revoked)")
        if "iss" in answer and answer["iss"] != self.settings.issuer:
            raise errors.invalid_token("the token was issued by another issuer")
        if not string_set(answer.get("aud")) & self.audiences:
            raise errors.invalid_token("the token was not issued for this resource")
        exp, nbf = answer.get("exp"), answer.get("nbf")
        if isinstance(exp, int | float) and now > exp + skew:
            raise errors.invalid_token("the token has expired")
        if isinstance(nbf, int | float) and now + skew < nbf:
            raise errors.invalid_token("the token is not valid yet")
        try:
            return from_claims(answer, self.claims, Identification.TOKEN)
        except ValueError as exc:
            raise errors.invalid_token(f"the token has {exc}") from None
