"""A resource URI in the one form the gateway judges, matches and forwards (RFC 3986 §6.2.2).

A backend's template matching percent-decodes what it reads (`files://%73ecret` is `files://secret` to it), so a
policy judging the URI as sent was passed by spelling a forbidden URI another way. Every resource path (read,
subscribe, unsubscribe, listen, completion by URI) normalises the URI once, here, judges that form and sends the
backend that same form: what is judged is what the backend reads.

The normal form: percent-encoded unreserved characters decoded (`%73` → `s`), the hex of every other escape
upper-cased (`%2f` → `%2F`), the scheme lower-cased. Host case and dot segments are left alone: backends match
them as written (`notes://NOTE/x` is not `notes://note/x` to them), so changing them would judge a URI the
backend does not read.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.display import shorten

__all__ = ["MalformedResourceUri", "normalized_uri"]

# RFC 3986 §2.3: escaping these changes nothing, so their escapes are decoded.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class MalformedResourceUri(MCPError):
    """A URI with a `%` that does not begin an escape: no normal form, so nothing could judge it."""

    def __init__(self, uri: str, at: int) -> None:
        super().__init__(
            types.INVALID_PARAMS,
            f"resource URI '{shorten(uri)}' has a '%' at character {at} not followed by two hex digits "
            "(RFC 3986 §2.1: a literal '%' is written '%25')",
            {"uri": shorten(uri, 512), "at": at},
        )


def normalized_uri(uri: str) -> str:
    """`uri` in RFC 3986 §6.2.2 normal form (see the module's docstring); `MalformedResourceUri` for a bad escape."""
    scheme = _SCHEME.match(uri)
    if scheme is not None and not scheme.group().islower():
        uri = scheme.group().lower() + uri[scheme.end() :]
    if "%" not in uri:
        return uri
    _refuse_stray_percent(uri)
    return _ESCAPE.sub(_normal_escape, uri)


def _normal_form(escape: str) -> str:
    decoded = unquote(escape)
    return decoded if decoded in _UNRESERVED else escape.upper()


# Every escape's normal form, computed once: a 64 KiB URI is ~21,000 escapes, each a dictionary look-up.
_NORMAL_ESCAPES = {f"%{a}{b}": _normal_form(f"%{a}{b}") for a in string.hexdigits for b in string.hexdigits}


def _normal_escape(escape: re.Match[str]) -> str:
    return _NORMAL_ESCAPES[escape.group()]


def _refuse_stray_percent(uri: str) -> None:
    """Every `%` of `uri` as sent must begin an escape (`%4%41` is no escape, though decoding would make one)."""
    if uri.count("%") == len(_ESCAPE.findall(uri)):
        return
    position = 0
    while (position := uri.find("%", position)) != -1:
        if _ESCAPE.match(uri, position) is None:
            raise MalformedResourceUri(uri, position)
        position += 3
