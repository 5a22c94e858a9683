"""OAuth access tokens (JWT) checked as the MCP authorization specification asks of a resource server.

With PyJWT (already a dependency of the MCP SDK, which uses it for its own client authentication, so no new
library): signature against the issuer's JWKS (`auth/jwks.py`), `iss` exactly the configured issuer, `aud`
this gateway's resource URI (RFC 8707, so a token minted for another server is refused) or one of
`oauth.audiences` when set (`api://vmcp`, a client id: what Entra ID, Keycloak and Okta issue), `exp` and `nbf`
with a small skew, and the algorithm from an allow-list of asymmetric ones matched to the key's type (no
`none`, no HS256 made with an RSA public key). Verified tokens are remembered by digest until they expire,
so a client sending the same token on every request pays for one signature check, and with the key that
verified it: once the issuer's key set no longer holds that key (rotated out, perhaps compromised), the token is
verified again, and refused. With an introspection endpoint, only a token that is not JWT-shaped goes there: a
malformed JWT is the client's `401`, never a question for the authorization server (which would refuse it, and
make it look like an outage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jwt

from vmcp_opt.auth import errors
from vmcp_opt.auth.caller import Identification
from vmcp_opt.auth.identity import Identity, from_claims
from vmcp_opt.auth.introspection import Introspection
from vmcp_opt.auth.jwks import JwksCache, JwksUnavailable
from vmcp_opt.config import ClaimNames, OAuthConfig

VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Verified:
    """A verified token's identity, and the key that verified it as of the key set `generation`."""

    identity: Identity
    kid: str | None
    alg: str
    thumbprint: str
    generation: int


class TokenVerifier:
    def __init__(
        self,
        settings: OAuthConfig,
        resource: str,
        claims: ClaimNames,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.issuer is not None
        self.settings = settings
        self.issuer = settings.issuer
        self.resource = resource
        self.audiences = accepted_audiences(settings.audiences, resource)
        # Named in refusals: the expected audience is no secret, and tells a wrong --port apart.
        self.expected = expected_audiences(settings.audiences, resource)
        self.claims = claims
        self.jwks = jwks or JwksCache(
            self.issuer,
            settings.jwks_url,
            refresh_interval=settings.jwks_refresh_interval,
            max_age=settings.jwks_max_age,
            timeout=settings.timeout,
        )
        self.clock = clock
        self._verified: OrderedDict[bytes, Verified] = OrderedDict()
        # Opaque tokens (not JWTs) go to the authorization server when an introspection endpoint is set.
        self.introspection = (
            Introspection(settings, self.audiences, claims, clock, expected=self.expected)
            if settings.introspection_url
            else None
        )

    async def authenticate(self, token: str) -> Identity:
        if self.introspection is not None and token.count(".") != 2:
            return await self.introspection.authenticate(token)  # opaque: asked (and cached) there
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        known = self._remembered(digest)
        if known is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            if jwt_shaped(token):
                raise errors.invalid_token("the token is a malformed JWT") from None
            if self.introspection is not None:
                return await self.introspection.authenticate(token)
            raise errors.invalid_token("not a JWT access token") from None
        verified = await self._verify(token, header)
        if verified.identity.expires_at is not None:  # never remembered past an expiry it cannot check
            self._verified[digest] = verified
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return verified.identity

    def _remembered(self, digest: bytes) -> Identity | None:
        """The identity of a token verified before, if it has not expired (else `invalid_token`) and its key is
        still the issuer's; None when it must be verified (again: a token whose key is gone is dropped)."""
        known = self._verified.get(digest)
        if known is None:
            return None
        expires_at = known.identity.expires_at
        if expires_at is not None and self.clock() > expires_at + self.settings.clock_skew:
            del self._verified[digest]
            raise errors.invalid_token("the token has expired")
        if known.generation != self.jwks.generation:
            if self.jwks.thumbprint(known.kid, known.alg) != known.thumbprint:
                del self._verified[digest]
                return None
            self._verified[digest] = replace(known, generation=self.jwks.generation)
        return known.identity

    async def aclose(self) -> None:
        """Close what holds connections open (the introspection client), at shutdown."""
        if self.introspection is not None:
            await self.introspection.aclose()

    async def _verify(self, token: str, header: dict[str, Any]) -> Verified:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise errors.invalid_token(f"signing algorithm {str(alg)[:16]!r} is not accepted")
        named = header.get("kid")
        kid = named if isinstance(named, str) else None
        try:
            key = await self.jwks.key(kid, alg)
        except JwksUnavailable as exc:
            raise errors.RetryLater(503, f"cannot verify tokens now: {exc}", exc.retry_after) from None
        thumbprint = self.jwks.thumbprint(kid, alg)
        if key is None or thumbprint is None:
            raise errors.invalid_token("the token's signing key is not one of the issuer's")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audiences,
                issuer=self.issuer,
                leeway=self.settings.clock_skew,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.invalid_token("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise errors.invalid_token("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise errors.invalid_token(
                f"the token was not issued for this resource (expected aud {self.expected})"
            ) from None
        except jwt.InvalidIssuerError:  # the issuer is public (the resource metadata names it); a slash differs
            raise errors.invalid_token(f"the token was issued by another issuer (expected iss {self.issuer})") from None
        except jwt.InvalidSignatureError:
            raise errors.invalid_token("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise errors.invalid_token(f"the token has no `{exc.claim}` claim") from None
        except jwt.PyJWTError:
            raise errors.invalid_token("the token is not valid") from None
        try:
            identity = from_claims(claims, self.claims, Identification.TOKEN)
        except ValueError as exc:
            raise errors.invalid_token(f"the token has {exc}") from None
        return Verified(identity, kid, alg, thumbprint, self.jwks.generation)


def accepted_audiences(listed: list[str] | None, resource: str) -> list[str]:
    """The `aud` values that admit a token: `oauth.audiences` exactly as written (`api://vmcp/` is not
    `api://vmcp`), or else the resource URL with or without its trailing slash. Never empty, so never "any"."""
    if listed is not None:
        assert listed, "config validation refuses an empty `audiences`"
        return sorted(set(listed))
    return sorted({resource, resource.rstrip("/"), resource.rstrip("/") + "/"})


def expected_audiences(listed: list[str] | None, resource: str) -> str:
    """The accepted audiences as a refusal names them."""
    if listed is None:
        return resource
    unique = list(dict.fromkeys(listed))
    return unique[0] if len(unique) == 1 else "one of " + ", ".join(unique)


def jwt_shaped(token: str) -> bool:
    """Three segments whose first is base64url of a JSON object: a JWT (if perhaps a broken one), not an opaque
    token, whatever else is wrong with it."""
    segments = token.split(".")
    if len(segments) != 3:
        return False
    head = segments[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):  # bad base64 (binascii.Error), not UTF-8, not JSON, absurdly nested
        return False
    return isinstance(header, dict)
