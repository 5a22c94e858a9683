"""What a tool's description says about the tool, apart from the docstring around it.

Real servers publish their functions' docstrings as descriptions: a summary, then `Args:` (or Sphinx
`:param x:`, or numpy `Parameters` / `----------`), `Returns:`, `Raises:`, examples and code. Indexed as
they are, those blocks repeat the schema's parameters, fill the model's 256-piece window before the
parameters are reached, and lengthen the keyword arm's document for nothing a request asks about.
`read_description` keeps the summary and hands back what the `Args` block says of each parameter, which
find_tool's answer (`answers.py`) puts where the schema has no description of its own (FastMCP-style
servers put them only in the docstring). The indexed document keeps the whole description: the dev split
ranked better with it (eval/README.md, "Docstring descriptions").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Section headers after which a docstring is no longer about what the tool does (Google and numpy styles).
# Every pattern here runs on a backend's text, a line of which may be megabytes: none may try a run of
# whitespace (or of letters) more than once. Adjacent quantifiers that could share characters (`\s*:?\s*`) are
# possessive, so a line that does not match fails in one pass, not in one per split of the run.
_SECTION = re.compile(
    r"^\s*+(args|arguments|parameters|params|keyword args|kwargs|other parameters|returns?|return value|"
    r"yields?|raises|throws|exceptions|examples?|usage|example usage|notes?|see also|attributes|"
    r"response|output)\s*+:?+\s*+$",
    re.IGNORECASE,
)
_ARG_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "kwargs", "other parameters"}
# Sections that warn of what a call does ("Note: this cannot be undone"): kept apart, for find_tool's answer.
_NOTE_SECTIONS = {"note", "notes"}
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_SPHINX_FIELD = re.compile(r"^\s*:(param|parameter|arg|argument|key|keyword|type|returns?|rtype|raises?)\b")
# `:param [type] name: text`: what lies between the keyword and the first colon is read by `_sphinx_name`; a
# single pattern for it (`\s+(?:[\w\[\], ]+\s+)?(\w+)\s*:`) tried every split of a long run of spaces.
_SPHINX_PARAM = re.compile(r"^\s*+:(?:param|parameter|arg|argument|key|keyword)(\s[^:]*+):\s*+(.*)$")
_SPHINX_TYPE = re.compile(r"[\w\[\], ]+")
_WORD = re.compile(r"\w+")
# `name (type): text`, `name: text`, numpy `name : type`.
_GOOGLE_ARG = re.compile(r"^\s*+\**+(\w++)\s*+(?:\([^)]*+\))?+\s*+:\s*+(.*)$")
_NUMPY_ARG = re.compile(r"^(\w++)\s*+:[^:]*+$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.\s)")
# A line is in another script when most of its letters are outside Latin (CJK, Cyrillic, Arabic, ...).
_LETTER = re.compile(r"[^\W\d_]")
# The summary is cut at a sentence end past this many characters: a tool's purpose comes first.
MAX_SUMMARY = 600


@dataclass(frozen=True)
class Description:
    summary: str
    # What the docstring's Args block says of each parameter, by name.
    arguments: dict[str, str] = field(default_factory=dict)
    # The text of its `Note:` / `Notes:` sections, joined.
    notes: str = ""


def read_description(text: str, limit: int | None = MAX_SUMMARY) -> Description:
    """The summary of a description (cut near `limit` characters; None: whole) and its documented arguments."""
    lines = [line for line in _without_code(text.splitlines()) if line.strip()]
    lines = _without_other_scripts(lines)
    summary: list[str] = []
    notes: list[str] = []
    arguments: dict[str, str] = {}
    section: str | None = None
    last_arg: str | None = None
    for position, line in enumerate(lines):
        header = _SECTION.match(line)
        if header:
            section, last_arg = header.group(1).lower(), None
            continue
        if _NUMPY_RULE.match(line) or (position + 1 < len(lines) and _NUMPY_RULE.match(lines[position + 1])):
            continue  # the underline of a numpy header, or a header unknown to _SECTION before one
        sphinx = _SPHINX_PARAM.match(line)
        name = _sphinx_name(sphinx.group(1)) if sphinx else None
        if sphinx and name:
            arguments[name], last_arg, section = sphinx.group(2).strip(), name, "sphinx"
            continue
        if _SPHINX_FIELD.match(line):
            section, last_arg = "sphinx-other", None
            continue
        if section is None:
            summary.append(line.strip())
        elif section in _ARG_SECTIONS or section == "sphinx":
            last_arg = _read_argument(line, arguments, last_arg)
        elif section in _NOTE_SECTIONS:
            notes.append(line.strip())
    joined = " ".join(summary)
    return Description(joined if limit is None else _shorten(joined, limit), arguments, " ".join(notes))


def _sphinx_name(between: str) -> str | None:
    """The parameter named by the text between `:param` and its colon (it starts with whitespace): its last
    word, after a type of words, brackets, commas and spaces (`:param Dict[str, int] name:`); else None."""
    words = between.split()
    if not words or not _WORD.fullmatch(words[-1]):
        return None
    typed = between.rstrip()[: -len(words[-1])].strip()
    return words[-1] if not typed or _SPHINX_TYPE.fullmatch(typed) else None


def _read_argument(line: str, arguments: dict[str, str], last: str | None) -> str | None:
    """One line of an Args block: a new argument, or more words of the last one."""
    indented = line[: len(line) - len(line.lstrip())]
    google = _GOOGLE_ARG.match(line)
    numpy = _NUMPY_ARG.match(line)
    if numpy and not indented:
        arguments.setdefault(numpy.group(1), "")
        return numpy.group(1)
    if google and (last is None or len(indented) <= 4):
        arguments[google.group(1)] = google.group(2).strip()
        return google.group(1)
    if last is not None:
        arguments[last] = f"{arguments[last]} {line.strip()}".strip()
    return last


def _without_code(lines: list[str]) -> list[str]:
    """Lines outside fenced code blocks, without doctest prompts and their output."""
    kept: list[str] = []
    fenced = False
    doctest = False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        if _DOCTEST.match(line):
            doctest = True
            continue
        if doctest and line.strip():
            continue  # a doctest's expected output runs until a blank line
        doctest = False
        kept.append(line)
    return kept


def _without_other_scripts(lines: list[str]) -> list[str]:
    """Lines mostly in a non-Latin script are dropped when the description also has Latin ones (a translated
    copy beside the English, or a note in another language): the English model reads them as noise."""
    latin = [line for line in lines if not _mostly_other_script(line)]
    return latin if latin and len(latin) < len(lines) else lines


def _mostly_other_script(line: str) -> bool:
    letters = _LETTER.findall(line)
    if not letters:
        return False
    # Latin letters, accented ones included, sit below U+0250.
    other = sum(1 for letter in letters if ord(letter) >= 0x250)
    return other * 2 > len(letters)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("; ", 0, limit))
    return text[: cut + 1] if cut > limit // 3 else text[:limit]
