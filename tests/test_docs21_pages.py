"""README.md and docs/architecture.md stay true to the code a reader is pointed at: every setting they quote is in
the generated reference with the default they give, the README's Layout names every package, and the
architecture page names every module (a module added without a word there is one a newcomer cannot place)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
REFERENCE = ROOT / "docs" / "configuration.md"
PACKAGE = ROOT / "vmcp_opt"
PAGES = [README, ARCHITECTURE]

# A backticked dotted name: `limits.max_sessions`, `workflows[].max_calls`, `limits.max_sessions*`.
_DOTTED = re.compile(r"`([a-z_]+(?:\[\])?(?:\.[a-z_<>]+(?:\[\])?)+)(\*?)`")
# A setting quoted with its default: "`server.drain_timeout` (25 s)", "`server.startup_wait` seconds (5)",
# "`limits.max_sessions`, 1000".
_WITH_FIGURE = re.compile(
    r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+)+)`(?:(?: [a-z]+)? \(|\)?, )([0-9][0-9,]*(?:\.[0-9]+)?)(?: s)?[),;]"
)
# Dotted names that start like a section but are code (`auth.caller.caller_key`) or a setting written relative to
# the backend it belongs to ("a stdio backend takes `auth.env`").
NOT_SETTINGS = {"auth.caller.caller_key", "auth.env"}


def _reference() -> dict[str, str]:
    """Every setting of docs/configuration.md (and each section heading) → its default as the table shows it."""
    rows: dict[str, str] = {}
    for line in REFERENCE.read_text().splitlines():
        row = re.match(r"^\| `([^`]+)` \| .*? \| (.*?) \| .*? \| ", line)
        if row:
            rows[row.group(1)] = row.group(2).strip("`")
        heading = re.match(r"^## `([^`]+)`", line)
        if heading:
            rows.setdefault(heading.group(1), "")
    return rows


def _sections(rows: dict[str, str]) -> set[str]:
    return {name.split(".")[0].removesuffix("[]") for name in rows}


def _unknown_settings(text: str, rows: dict[str, str]) -> list[str]:
    sections = _sections(rows)
    unknown = []
    for name, star in sorted(set(_DOTTED.findall(text))):
        if name in NOT_SETTINGS or name.endswith(".py") or name.split(".")[0].removesuffix("[]") not in sections:
            continue  # a module (`rate_limits.py`), or a Python path
        # `limits.max_sessions*` stands for every setting it starts; a section name for its settings
        if not any(row == name or row.startswith(name + ".") or (star and row.startswith(name)) for row in rows):
            unknown.append(name + star)
    return unknown


def _wrong_defaults(text: str, rows: dict[str, str]) -> list[str]:
    wrong = []
    for name, figure in _WITH_FIGURE.findall(" ".join(text.split())):
        default = rows.get(name)
        if default is None or default in ("unset", ""):
            continue
        try:
            if float(figure.replace(",", "")) != float(default):
                wrong.append(f"{name}: the page says {figure}, the default is {default}")
        except ValueError:
            continue  # a default that is not a number ("auto"): the figure is something else
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_a_page_quotes_is_in_the_configuration_reference(page: Path) -> None:
    assert _unknown_settings(page.read_text(), _reference()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_default_a_page_quotes_beside_its_setting_is_the_reference_default(page: Path) -> None:
    assert _wrong_defaults(page.read_text(), _reference()) == []


def test_the_checks_catch_a_misspelt_setting_and_a_stale_default() -> None:
    rows = _reference()
    text = "waits `server.startup_wait` seconds (7), then `limits.max_sesions` or `limits.max_sess` refuses"
    assert _unknown_settings(text, rows) == ["limits.max_sesions", "limits.max_sess"]
    assert _wrong_defaults(text, rows) == ["server.startup_wait: the page says 7, the default is 5.0"]
    # and the README still quotes enough defaults the pattern reads for the check to mean something
    assert len(_WITH_FIGURE.findall(" ".join(README.read_text().split()))) >= 10


def test_the_readme_layout_names_every_package() -> None:
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert [p for p in packages if f"vmcp_opt/{p}/" not in layout] == []


def test_the_architecture_page_names_every_module() -> None:
    text = ARCHITECTURE.read_text()
    modules = sorted(
        p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    # A module is named by its path or file name, or as a dotted function of it (`shared/rate_limits.rate_limiter`).
    unnamed = [str(m) for m in modules if not re.search(rf"(?<![a-z_]){re.escape(m.stem)}(?![a-z_])", text)]
    assert unnamed == []
