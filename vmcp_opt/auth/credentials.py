"""A stable, loggable id for a credential the gateway has seen, without keeping the credential."""

from __future__ import annotations

import hashlib
import hmac
import secrets


class CredentialIds:
    """`credential:<digest>` for an Authorization header (or API key) value.

    The value is hashed at once with a key of this process (HMAC-SHA-256), so the id in logs and audit
    records cannot be tested against a guessed credential offline; only the digest is ever kept.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def id_of(self, credential: str) -> str:
        digest = hmac.new(self._key, credential.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"credential:{digest[:32]}"
