"""Who is calling: the `Caller` every request carries from admission to the backend."""

from vmcp_opt.auth.caller import Caller, CallerLifetime, Identification
from vmcp_opt.auth.credentials import CredentialIds

__all__ = ["Caller", "CallerLifetime", "CredentialIds", "Identification"]
