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
# Characters a `${VAR:-default}`'s default may hold: a config file is bounded, but the default is copied into
# every value that uses it.
MAX_DEFAULT_CHARS = 1024
# A reference in a config value, expanded from the environment at load: `${VAR}`, `${VAR:-default}` (VAR unset or
# empty: the default) and `${VAR-default}` (VAR unset), as Docker Compose and the shell read them. The default is
# text as written: no `$`, `{` or `}` in it, so nothing nested and nothing run. Group 1 is the name, so `findall`
# gives names; `ENV_REFERENCE_PARTS` names the operator and the default too.
_DEFAULT = rf"[^{{}}$]{{0,{MAX_DEFAULT_CHARS}}}"
ENV_REFERENCE = re.compile(rf"\$\{{([A-Za-z_][A-Za-z0-9_]*)(?::?-{_DEFAULT})?\}}")
ENV_REFERENCE_PARTS = re.compile(rf"\$\{{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>{_DEFAULT}))?\}}")
# Where an unsupported form shows its operator: `${NAME:?…}`, `${NAME+…}`.
_FORM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+=])?")
_SHOWN_NAME_CHARS = 40
_FORMS = {
    "?": "the shell's error-if-unset form",
    "+": "the shell's alternative-value form",
    "=": "the shell's assign-default form",
    "-": "a default holding `$`, `{` or `}` (a default is used as written: nothing nested or run in it) or longer "
    f"than {MAX_DEFAULT_CHARS:,} characters",
}
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


def invalid_references(text: str) -> list[str]:
    """Each `${` in `text` that starts no reference `ENV_REFERENCE` reads, described without what follows its
    operator (a default or message may be a secret): such text was sent to a backend as written."""
    found: list[str] = []
    start = text.find("${")
    while start != -1:
        match = ENV_REFERENCE.match(text, start)
        if match:
            start = text.find("${", match.end())
            continue
        close = text.find("}", start)
        found.append(_form(text[start + 2 : close] if close != -1 else None))
        start = text.find("${", close + 1 if close != -1 else len(text))
    return list(dict.fromkeys(found))


def _form(body: str | None) -> str:
    if body is None:
        return "`${` without its closing `}`"
    written = _FORM.match(body)
    if written is None:
        shown = body if re.fullmatch(r"\w{1,40}", body) else "…"
        return f"`${{{shown}}}`, which names no variable (a name is letters, digits and _, not starting with a digit)"
    name, op = written.group(1)[:_SHOWN_NAME_CHARS], written.group(2)
    if op is None:
        return f"`${{{name}…}}`, which is not a reference"
    return f"`${{{name}{op}…}}`, {_FORMS[op[-1]]}, which is not supported"
