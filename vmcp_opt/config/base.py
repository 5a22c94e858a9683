"""What every section shares: strict models, the error that lists problems, paths and name rules."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # vmcp_opt/
PROJECT_ROOT = PACKAGE_ROOT.parent
# The bundled demo: a wheel carries examples/ inside the package (pyproject.toml's force-include); a source
# checkout has it beside the package.
_PACKAGED_DEMO = PACKAGE_ROOT / "examples" / "demo.yaml"
DEFAULT_CONFIG_PATH = _PACKAGED_DEMO if _PACKAGED_DEMO.exists() else PROJECT_ROOT / "examples" / "demo.yaml"
APP_NAME = "vmcp-opt"

BACKEND_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"
# What a served tool may be named (the 2025-11-25 specification's guidance; aggregation/screening.py drops others).
TOOL_NAME_RULE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# A `${VAR}` in a config value, expanded from the environment at load.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Names (env keys, `${VAR}` references, URL query parameters) whose values are secrets whatever they look like.
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|COOKIE|SESSION|(^|_)(KEY|PAT|PWD|PASS)$",
    re.I,
)
MASK = "***"
# URL query parameters whose values are credentials (`?token=`, `&api_key=`, a signed URL's `sig=`).
SECRET_PARAMETER = re.compile(r"token|key|secret|passw|pwd|sig|auth|credential|session", re.I)


def mask_url(url: str) -> str:
    """`url` as it may be shown: `***@host`, and `***` for the values of secret-named query parameters. Here, not
    in backends/secrets.py, so that config errors (a leaf's) can show a URL too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={MASK}" if sep and SECRET_PARAMETER.search(unquote(name)) else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&"))
        if name or sep
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists `path: reason` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class _PerCallerWithinTotal(_Strict):
    """A bound for one caller and one for all: a section declares both fields (its defaults, its words)."""

    per_caller: int
    total: int

    @model_validator(mode="after")
    def _per_caller_within_total(self) -> _PerCallerWithinTotal:
        if self.per_caller > self.total:
            raise ValueError(f"per_caller ({self.per_caller}) is more than total ({self.total}); lower per_caller")
        return self
