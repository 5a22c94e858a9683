"""Why a request was not authenticated, as the HTTP status and the RFC 6750 error the client is told."""

from __future__ import annotations


class AuthError(Exception):
    """`status` and `error` go to the client (`WWW-Authenticate`); the description never quotes a credential."""

    def __init__(self, status: int, error: str | None, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error  # None: no credentials were sent (RFC 6750 §3.1 leaves the error out)
        self.description = description
        self.scope = scope


class RetryLater(AuthError):
    """Refused for now, not for good (an introspection budget spent, signing keys that cannot be refreshed yet):
    the HTTP answer carries `Retry-After: retry_after`, the whole seconds until asking again can succeed."""

    def __init__(self, status: int, description: str, retry_after: int) -> None:
        super().__init__(status, "temporarily_unavailable", description)
        self.retry_after = retry_after


def missing() -> AuthError:
    return AuthError(401, None, "authentication required")


def invalid_token(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


def invalid_request(description: str) -> AuthError:
    return AuthError(400, "invalid_request", description)


def insufficient_scope(needed: list[str]) -> AuthError:
    scope = " ".join(needed)
    return AuthError(403, "insufficient_scope", f"the token lacks the scopes this gateway requires: {scope}", scope)


def unavailable(description: str) -> AuthError:
    return AuthError(503, "temporarily_unavailable", description)
