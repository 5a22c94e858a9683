"""What a backend request can fail with before or besides the backend's own answer."""

from __future__ import annotations


class BackendUnavailable(Exception):
    """The backend cannot take requests now; the message names it and says why."""


class CredentialError(BackendUnavailable):
    """The gateway could not authenticate to a backend: the message names the backend and the failing step
    (token endpoint refused, exchange refused, backend refused the token), never a token or secret."""

    def __init__(self, backend: str, step: str, reason: str) -> None:
        super().__init__(f"backend '{backend}': {step}: {reason}")
        self.backend = backend
        self.step = step
