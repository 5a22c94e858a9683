"""Values that look secret are replaced before request or response data leaves in an audit event.

Redaction is by key (`password`, `pwd`, `token`, `auth`, `session_id`, …) and by pattern in free text: credentials
after an auth scheme (`Bearer x`, `Basic <user:pass in base64>`, `Digest username=…, response=…`, `Token x`), JWTs,
our API keys, well-known tokens (`ghp_…`, `github_pat_…`, `xoxb-…`, `sk-…`, `glpat-…`, `AKIA…`, the value after
`aws_secret_access_key`), a URL's credentials before its host (`postgres://[REDACTED]@db`), a URL query's signature
(`&X-Amz-Signature=[REDACTED]`) and PEM private keys (the whole block, to its END line, or to the end of a text cut
short). A secret key's value is replaced whole, whatever it is: a string, a number, a list or an object; so is the
`value` of a name/value pair whose name is a secret's (`{"name": "X-Api-Key", "value": …}`), and the second item of a
pair written as a two-item list (`["Authorization", "Bearer …"]`, `["password", "hunter2"]`) or the item after an
argv's secret-named flag (`["--token", "abc"]`) when it is a string or a number: a first item that is one word
naming a secret, so `["x", "y"]` and coordinates stay. `PWD` and `OLDPWD`, exactly, are the shell's working
directories, not passwords (`pwd`, `DB_PWD`, `PWD_HASH` are). A string holding a JSON
object or array (`call_tool`'s `arguments` may come as one) is parsed, redacted the same way and written back as
JSON, when it is at most `MAX_PARSED_CHARS` long. Any other string (a code-mode script, a note, JSON too long to
parse) has the values of its secret-looking members blanked where they are written as JSON (`"password": "…"`,
`"token": {…}`, `"password": […]`), Python or Starlark (`'api_key': '…'`, `token="…"`), an assignment or a header
(`secret = …`, `Authorization: Basic …`: the scheme and its credential), also inside a quoted string of escaped JSON
(`"{\\"token\\": …}"`); a secret-named long option's value (`--password abc`, `--token=abc`) and a two-item list's
(`["password", "…"]`) are blanked too. A secret a tool returns under an innocent key, or in its prose, is written as it is:
redaction cannot know it.

The audit log keeps only `max_data_bytes` of each part (`redacted_within`): redaction reaches that far into the
value's JSON and `EDGE_CHARS` further, and no further. A 4 MB argument cost the writer thread ~0.6 s of
pattern matching with the GIL held (every request waited) to write 4 KB of it; now it costs what it keeps. At
the cut a value runs to the end of the text: a quoted value never closed, a list never closed, a credential or
a JWT cut short are blanked whole, so a secret that straddles the cut leaks no half of itself.

A client chooses this text (up to `server.max_body_bytes`), and `re` holds the GIL while it matches, so every
pattern runs in time linear in the text: possessive quantifiers (no backtracking into a run), a JWT only at the
start of a token, a member's key tested by a function rather than by the pattern, a bare key only at the start
of a word, an opening quote only where it is not escaped, and each place in the text tried as a member's start
once. The JWT pattern that backtracked took 35 s over 150 kB of "eyJeyJeyJ…", and the whole gateway stood still
for that long. bench/redaction.py measures each pattern's worst input.

Past ~450 lines on purpose: the walk over structured values and the patterns over free text apply one set of rules
(which names are a secret's, `PWD`'s exception, the pair and argv shapes) and one cut (`redacted_within`'s limit and
`EDGE_CHARS`), and a string inside a structure goes through the text patterns: split, each half would restate them.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, NamedTuple

from vmcp_opt.logs import masked_query_secrets

REDACTED = "[REDACTED]"
# Characters of a string redacted past the point where the kept JSON ends: the members whose key is before the
# cut and whose value starts before it are seen whole enough to be blanked.
EDGE_CHARS = 1024
# Longer JSON strings are not parsed: the writer thread shares the GIL with requests.
MAX_PARSED_CHARS = 65_536
_MAX_DEPTH = 20
# `auth` only as a word of its own (`x-auth`, `auth_header`; not `author`, `oauth`), `session_id` not
# `session_idle`; with `re.I`, `[a-z]` is any letter. The alternatives are grouped by first letter: a 4 MB key is
# searched as fast as before `pwd`, `auth`, `session_id` and the signatures were added (twice as slow ungrouped).
_SECRET_KEY = re.compile(
    r"p(?:ass|wd|rivate)|s(?:ecret|ession[-_]?id(?![a-z]))|token|c(?:ookie|redential)"
    r"|a(?:pi[-_]?key|uth(?:ori[sz]ation|(?<![a-z]auth)(?![a-z])))|(?:amz|goog)-signature",
    re.I,
)
# A URL query's signature (`?sig=…`, `&Signature=…`, presigned S3 and GCS URLs): a secret only after `?` or `&`,
# a signature elsewhere (`"signature": "def f(x)"`, prose) is not one.
_QUERY_SIGNATURE = re.compile(r"(?:x-(?:amz|goog)-)?sig(?:nature)?", re.I)
# A name/value pair (a header list, HAR, Kubernetes' env, Postman, AWS tags): the value is a secret when its
# sibling names one (`{"name": "X-Api-Key", "value": "…"}`).
_PAIR_NAMES = ("name", "Name", "key", "Key", "header", "Header")
_PAIR_VALUES = ("value", "Value")
_PAIR_NAME_CHARS = 256
# Names the key pattern matches that are not secrets: `PWD` and `OLDPWD` are the shell's working directories (a
# path, in every process's environment). Exact and upper-case only: `pwd`, `DB_PWD`, `PWD_HASH` stay secrets.
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})
# A pair written as a list (`["Authorization", "Bearer …"]`, `["password", "hunter2"]`) or an argv's flag and its
# value (`["--token", "abc"]`): the name is one word (a header's, a variable's, a flag's), not prose.
_LIST_NAME = re.compile(r"-{0,2}+[A-Za-z_][\w.-]*+")
_FLAG = re.compile(r"--?+[A-Za-z][\w.-]*+")  # an argv item that names the next one (`--token`, `-password`)
# A secret-named long option and its value written with a space (`--password abc`, `mysql --token x`; with `=` it
# is a member). A value starting with `-` is the next option, not one.
_SECRET_FLAG = re.compile(r"""-(?<![\w-].)-(?P<name>[A-Za-z][\w.-]*+)[ \t]++(?P<value>(?!-)[^\s"'\\,;&(){}\[\]<>]++)""")
# A pair written as a two-item list in text too long to parse (`["password", "hunter2"]`): a quoted name, a comma,
# a value, the closing bracket. The name's run is bounded: each `[` is tried at most that far, then to a quote.
_LIST_PAIR = re.compile(
    r"""\[\s*+(?P<name>"[^"\\\n]{1,256}+"|'[^'\\\n]{1,256}+')\s*+,\s*+"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*+"|'(?:[^'\\\n]|\\.)*+'|[^\s"',\[\]{}]++)\s*+\]"""
)
_PAIR_KEY_CHARS = len('\\"header\\"')  # the longest of those keys, quoted as escaped JSON
# Well-known token shapes in free text, with no key to name them: GitHub's (`ghp_`, `gho_`, …, `github_pat_`),
# Slack's (`xoxb-`, `xoxp-`, …), `sk-` API keys (OpenAI's, Anthropic's; with a digit or a capital: `sk-learn-…`
# slugs are not keys), GitLab's `glpat-` and AWS access key ids (`AKIA`/`ASIA` + 16). A token starts a run of
# `[\w-]` and is that whole run, taken possessively: each run is read once or twice, linear, and a prefix with
# too short a run is no match (no Python work per look-alike). The first letter is matched ahead of the look
# behind, as in `_SECRET_TEXT`: `re` skips at once the places none can start.
_PREFIXED_TOKEN = re.compile(
    r"""[gxsA](?<![\w-].)(?:(?<=g)(?:h[pousr]_|ithub_pat_|lpat-)[\w-]{20,}+|(?<=x)ox[abposr]-[\w-]{10,}+"""
    r"""|(?<=s)k-(?=[a-z_-]*+[0-9A-Z])[\w-]{20,}+|(?<=A)[KS]IA[0-9A-Z]{16}(?![\w-]))"""
)
# A token's first characters where a text was cut: a prefix and the run after it, at the text's end.
_TOKEN_START = re.compile(r"""(?<![\w-])(?:gh[pousr]_|github_pat_|glpat-|xox[abposr]-|sk-|A[KS]IA)[\w-]++\Z""")
_TOKEN_START_CHARS = 128  # how far from a cut text's end a token's start is looked for
# The value after `aws_secret_access_key` or `aws_session_token` written with a space (`aws configure set …`; with
# `=` or `:` it is a member). A pattern of its own: joined to `_PREFIXED_TOKEN` it cost 4 times as much on "a:a:…".
_AWS_SECRET = re.compile(r"""(?i)(aws_(?:secret_access_key|session_token)[ \t]++)(?P<value>[^\s"'\\,;]++)""")
_AUTHORIZATION = re.compile(r"authori[sz]ation", re.I)
_SCHEMES = frozenset({"basic", "bearer", "digest", "token", "negotiate", "ntlm", "dpop", "oauth", "apikey"})
# An auth-param (RFC 7235: `name=token` or `name="quoted"`, as in Digest), its quoted value perhaps cut short.
_PARAM = r"""[\w-]++\s*+=\s*+(?:"[^"\n]*+"?|\\"(?:[^"\\\n]|\\[^"\n])*+(?:\\")?|[^\s,"\\]++)"""
_PARAMS = rf"""{_PARAM}(?:\s*+,\s*+{_PARAM})*+"""
# Credentials in free text: bearer tokens, JWTs, our API keys, Digest's auth-params, and what follows `Basic` or
# `Token`. A bearer token ends at a quote or a backslash: in `"Bearer a.b", "next": …` it is `a.b`, not the rest
# of the document. `Basic` and `Token` are English words too: what follows them is taken for a credential only
# when it looks like one (`_is_credential`). A JWT cut after its payload is still one. Each alternative's first
# letter is matched once, ahead of them all, and looked behind at after: `re` then skips at once the places
# none can start (twice as fast over prose as a look behind first); all but `bearer` and `vmcp_` start a word.
_SECRET_TEXT = re.compile(
    r"""(?i)[bdetv](?:(?<=b)earer\s++[^\s"'\\]++|(?<=v)mcp_[A-Za-z0-9_-]{16,}+"""
    r"""|(?<![\w-].)(?:(?<=e)yJ[\w-]++\.[\w-]++(?:\.[\w-]*+|\Z)"""
    rf"""|(?<=d)igest\s++{_PARAMS}"""
    r"""|(?:(?P<basic>(?<=b)asic)|(?<=t)oken)\s++(?P<credential>[\w.~+/-]++=*+)))"""
)
# What may follow an auth scheme written as a secret key's bare value (`Authorization: Basic …`): a list of
# auth-params (Digest's) or one credential.
_CREDENTIALS = re.compile(rf"""[ \t]++(?:{_PARAMS}|[^\s"'\\,;]++)""")
_NOT_A_WORD = re.compile(r"[^A-Za-z]|[a-z][A-Z]")  # a digit, a symbol or a capital inside: `tok9…`, `dXNl…`
# A member: a key, `:` or `=` (`:=`, `==`), and its value. The key is a JSON string (whose opening quote is not
# escaped), a Python one, an escaped JSON string (`\"key\"`, inside a quoted string) or a word; the value any
# of those strings, the opening of an object or a list, or a bare run (`1234`, `hunter2`, `abc.def`) up to a
# `:` or `=` (a secret's is blanked on to the end of its run, `_BARE_RUN`). A quoted value runs to its closing
# quote, or to the line's end when none comes (a value cut short, or a stray quote: a secret's is blanked to
# there). A secret's object or list is blanked to its closing bracket (`_bracket_end`); after another key the
# search goes on inside it, to the members it holds. Strings stop at a line's end: a stray apostrophe in a
# script's comment is not paired with one lines below. Each key begins with the character it starts at, its
# look behind after it (`"(?<!\\")`: the quote is not escaped; `[\w.-](?<![\w.-]{2})`: a word starts here): `re`
# then skips at once the places no key can start (a third of the time over prose).
_MEMBER = re.compile(
    r"""(?P<key>"(?<!\\")(?:[^"\\\n]|\\.)*+"|'(?<!\\')(?:[^'\\\n]|\\.)*+'|\\"[^"\\\n]*+\\"|[\w.-](?<![\w.-]{2})[\w.-]*+)"""
    r"""\s*+[:=]=?\s*+"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*+(?:"|\\?(?=\n)|\\?\Z)|'(?:[^'\\\n]|\\.)*+(?:'|\\?(?=\n)|\\?\Z)"""
    r"""|\\"(?:[^"\\\n]|\\[^"\n])*+(?:\\"|\\?(?=["\n])|\\?\Z)|[\[{]|[^\s"'\\,;&(){}\[\]<>:=]++)"""
)
# A URL's credentials, `user:password@` up to its last `@` (as `mask_url` reads them). The run stops at a `/`, so
# the runs after two `://` never overlap: one backtracking over each run, linear. `\\` and `'`: a URL inside
# escaped JSON or a Python string ends there.
_USERINFO = re.compile(r"""(?<=://)[^\s/?#"'<>\\]*@""")
_AUTHORITY_END = re.compile(r"""[\s/?#"'<>\\@]""")  # what ends a URL's authority (its `@`: what precedes it masked)
_MASK = "***"  # as the gateway's log masks a URL (`masked_query_secrets`)
# A PEM private key (PKCS#1, PKCS#8, OpenSSH, EC, encrypted, PGP's block), to its END line. At most 8 words before
# `PRIVATE KEY`, each run taken possessively: a bounded number of tries per `-----BEGIN`, each one run long.
_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]++ ){0,8}?PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END [^-\n]{0,64}+-----")
_BARE_RUN = re.compile(r"""[^\s"'\\,;&(){}\[\]<>]*+""")  # a secret's bare value: `user:pass`, `abc==`
# What nests inside an object or a list: brackets, and the strings whose brackets do not count.
_NESTING = re.compile(
    r"""\\"(?:[^"\\\n]|\\[^"\n])*+\\"|"(?<!\\")(?:[^"\\\n]|\\.)*+"|'(?<!\\')(?:[^'\\\n]|\\.)*+'|[\[\]{}]"""
)


class Kept(NamedTuple):
    """What `redacted_within` keeps of a value: redacted, and `whole`, or a copy cut past the limit."""

    value: Any
    whole: bool


def redacted(value: Any) -> Any:
    """`value` with what looks secret replaced, all of it."""
    return _Redaction(None).value(value, 0)


def redacted_within(value: Any, limit: int) -> Kept:
    """`value` redacted as far as the first `limit` characters of its JSON (`json.dumps`) reach: past them each
    string is cut `EDGE_CHARS` later before it is redacted, and the members and items that would start past them
    are left out. The copy's JSON starts as the whole value's, redacted, would, up to `limit` characters at
    least (no further, when redaction shortened a string that was cut)."""
    redaction = _Redaction(limit)
    kept = redaction.value(value, 0)
    return Kept(kept, redaction.whole)


class _Redaction:
    """One walk over a value. With a limit it counts the characters of JSON written so far, each part at fewer
    than it takes (a string's own characters and its quotes, a member's key and colon, a bracket, a comma, one
    for a number), so that where the count reaches the limit the JSON has already."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit
        self.whole = True

    def value(self, value: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            return self._spent(REDACTED)
        if isinstance(value, dict):
            return self._object(value, depth)
        if isinstance(value, list | tuple):
            return self._array(value, depth)
        if isinstance(value, str):
            return self._text(value, depth)
        self._spend(1)
        return value

    def _object(self, value: dict[Any, Any], depth: int) -> dict[Any, Any]:
        self._spend(2)
        kept: dict[Any, Any] = {}
        secret_pair = _names_a_secret(value)
        for key, item in value.items():
            if self._past_limit():
                break
            name = str(key)
            shown = self._cut(name)  # a key is written as it is: a long one is cut as a string is
            self._spend(len(shown) + 3)
            secret = _is_secret_key(shown) or (secret_pair and key in _PAIR_VALUES)
            kept[key if shown is name else shown] = self._spent(REDACTED) if secret else self.value(item, depth + 1)
        return kept

    def _array(self, value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        self._spend(2)
        kept: list[Any] = []
        pair = len(value) == 2 and _is_list_name(value[0])  # `["password", "hunter2"]`
        after_flag = False  # the item before was a secret's flag (`"--token"`): this one is its value
        for item in value:
            if self._past_limit():
                break
            self._spend(1)
            secret = (after_flag or (pair and len(kept) == 1)) and _is_scalar(item)
            kept.append(self._spent(REDACTED) if secret else self.value(item, depth + 1))
            after_flag = isinstance(item, str) and _is_secret_flag(item)
        return kept

    def _text(self, text: str, depth: int) -> str:
        if len(text) <= MAX_PARSED_CHARS:
            stripped = text.strip()
            if (stripped[:1], stripped[-1:]) in (("{", "}"), ("[", "]")):
                try:
                    parsed = json.loads(stripped)
                except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: free text
                    pass
                else:
                    self._spend(2)
                    return json.dumps(self.value(parsed, depth + 1), ensure_ascii=False)
        kept = self._cut(text)
        return self._spent(_redacted_text(kept, cut=len(kept) < len(text)))

    def _cut(self, text: str) -> str:
        """`text` cut `EDGE_CHARS` past the limit."""
        if self.left is None or len(text) <= max(self.left, 0) + EDGE_CHARS:
            return text
        self.whole = False
        return text[: max(self.left, 0) + EDGE_CHARS]

    def _past_limit(self) -> bool:
        """Whether what comes next would start past the limit: left out, and the copy is not whole."""
        if self.left is None or self.left > 0:
            return False
        self.whole = False
        return True

    def _spend(self, characters: int) -> None:
        if self.left is not None:
            self.left -= characters

    def _spent(self, text: str) -> str:
        self._spend(len(text) + 2)
        return text


def _is_secret_key(key: str) -> bool:
    """Whether a member's key (quoted or not) names a secret: `_SECRET_KEY` finds one in it, and it is not one of
    `_NOT_SECRET_NAMES`."""
    return _SECRET_KEY.search(key) is not None and (len(key) > 10 or _unquoted(key) not in _NOT_SECRET_NAMES)


def _is_list_name(item: Any) -> bool:
    """Whether `item`, first of a two-item list, is a secret's name (`"Authorization"`, `"--token"`), its value
    second; prose (`["my password", …]`) and ordinary pairs (`["x", "y"]`, coordinates) are not."""
    return (
        isinstance(item, str)
        and len(item) <= _PAIR_NAME_CHARS
        and _LIST_NAME.fullmatch(item) is not None
        and _names_secret(item)
    )


def _is_secret_flag(item: str) -> bool:
    """Whether an argv item is an option naming a secret (`--token`, `-password`), the next item its value."""
    return len(item) <= _PAIR_NAME_CHARS and _FLAG.fullmatch(item) is not None and _names_secret(item)


def _is_scalar(item: Any) -> bool:
    """A value a name or a flag gives (a string or a number), not a structure that goes on being walked."""
    return isinstance(item, str | int | float) and not isinstance(item, bool)


def _names_a_secret(value: dict[Any, Any]) -> bool:
    """Whether `value` is a name/value pair whose name is a secret's (`{"name": "X-Api-Key", "value": …}`)."""
    if not any(key in value for key in _PAIR_VALUES):
        return False
    for key in _PAIR_NAMES:
        name = value.get(key)
        if isinstance(name, str) and _names_secret(name):
            return True
    return False


def _redacted_text(text: str, cut: bool) -> str:
    # Whole private keys first (their base64 would be read as members and words); then tokens:
    # `Authorization: Bearer x` is then `Authorization: [REDACTED]`, not a blanked `Bearer` and x.
    text = _blanked_url_credentials(_blanked_private_keys(text), cut)
    text = _blanked_tokens(_blanked_credentials(text, cut), cut)
    return _blanked_members(_blanked_list_pairs(_blanked_flags(text)))


def masked_target(text: str, cut: bool) -> str:
    """An operation's target as audit events and spans show it (a resource URI a client chose): the values of
    secret-named query parameters and the credentials before a URL's host masked as the gateway's log masks them.
    `cut`: `text` is the start of a longer target, and a URL's authority running to its end may be a password's
    first characters (`https://admin:Hunt`), masked whole."""
    masked = masked_query_secrets(text)
    open_authority = _open_authority(masked) if cut else None
    return masked if open_authority is None else f"{masked[:open_authority]}{_MASK}"


def _blanked_private_keys(text: str) -> str:
    """`text` with each PEM private key block replaced whole, its markers too; one never closed (cut short) to the
    end of the text. Each search starts where the last block ended: linear."""
    if "-----BEGIN" not in text:
        return text
    parts: list[str] = []
    done = 0
    while (begin := _PEM_BEGIN.search(text, done)) is not None:
        end = _PEM_END.search(text, begin.end())
        parts += [text[done : begin.start()], REDACTED]
        done = end.end() if end is not None else len(text)
    parts.append(text[done:])
    return "".join(parts)


def _blanked_url_credentials(text: str, cut: bool) -> str:
    """`text` with the credentials before any URL's host blanked (`postgres://[REDACTED]@db`), and, when the text
    was cut, a URL's authority running to the cut (the credential's first characters, perhaps)."""
    if "://" not in text:
        return text
    if "@" in text:
        text = _USERINFO.sub(f"{REDACTED}@", text)
    open_authority = _open_authority(text) if cut else None
    return text if open_authority is None else f"{text[:open_authority]}{REDACTED}"


def _open_authority(text: str) -> int | None:
    """Where the authority of a URL runs to the end of `text` starts (past its `://`), or None."""
    start = text.rfind("://")
    if start < 0 or _AUTHORITY_END.search(text, start + 3) is not None:
        return None
    return start + 3 if start + 3 < len(text) else None


def _blanked_credentials(text: str, cut: bool) -> str:
    """`text` with each credential `_SECRET_TEXT` finds replaced. A `Basic` or `Token` followed by a word that is
    not a credential is passed over, and the search goes on from that word. `cut`: the text was cut short, and a
    word at its end may be a credential's first characters."""
    parts: list[str] = []
    done = position = 0
    while (found := _SECRET_TEXT.search(text, position)) is not None:
        credential = found.group("credential")
        at_cut = cut and found.end() == len(text)
        if credential is not None and not _is_credential(found.group("basic") is not None, credential, at_cut):
            position = found.start("credential")
            continue
        parts += [text[done : found.start()], REDACTED]
        done = position = found.end()
    parts.append(text[done:])
    return "".join(parts)


def _is_credential(basic: bool, word: str, at_cut: bool) -> bool:
    """Whether `word` after `Basic` or `Token` is a credential: one cut short where the text was cut is taken
    for one; else base64 of `user:password` (Basic), or eight characters or more with a digit, a symbol or a
    capital inside (`Basic instructions`, `token budget` are prose)."""
    if at_cut or (len(word) >= 8 and _NOT_A_WORD.search(word)):
        return True
    if not basic:
        return False
    try:
        return b":" in binascii.a2b_base64(word + "=" * (-len(word) % 4))
    except (binascii.Error, ValueError):
        return False


def _blanked_tokens(text: str, cut: bool) -> str:
    """`text` with each well-known token (`_PREFIXED_TOKEN`) replaced, and the secret after `aws_secret_access_key`.
    `cut`: a token's first characters at the end of the text are blanked too."""
    text = _PREFIXED_TOKEN.sub(REDACTED, text)
    if cut and (start := _TOKEN_START.search(text, max(0, len(text) - _TOKEN_START_CHARS))) is not None:
        text = f"{text[: start.start()]}{REDACTED}"
    return _AWS_SECRET.sub(lambda found: _blanked_aws_secret(found, cut and found.end() == len(text)), text)


def _blanked_aws_secret(found: re.Match[str], at_cut: bool) -> str:
    """`aws_secret_access_key [REDACTED]`, or the words as they were when what follows is prose (`… is a setting`):
    a secret has eight characters or more, with a digit, a symbol or a capital inside, or is cut short at the cut."""
    value = found.group("value")
    secret = at_cut or (len(value) >= 8 and _NOT_A_WORD.search(value) is not None)
    return f"{found.group(1)}{REDACTED}" if secret else found.group()


def _blanked_flags(text: str) -> str:
    """`text` with the value after each secret-named long option blanked (`--password [REDACTED]`)."""
    if "--" not in text:
        return text
    return _SECRET_FLAG.sub(_blanked_flag, text)


def _blanked_flag(found: re.Match[str]) -> str:
    if not _names_secret(found.group("name")):
        return found.group()
    return f"{found.group()[: found.start('value') - found.start()]}{REDACTED}"


def _blanked_list_pairs(text: str) -> str:
    """`text` with the value of each two-item list whose first item names a secret blanked
    (`["password", "[REDACTED]"]`), quoted as it was."""
    if "[" not in text:
        return text
    return _LIST_PAIR.sub(_blanked_list_pair, text)


def _blanked_list_pair(found: re.Match[str]) -> str:
    name, value = found.group("name"), found.group("value")
    if not _is_list_name(name[1:-1]):
        return found.group()
    start, end = found.start("value") - found.start(), found.end("value") - found.start()
    quote = value[0] if value[0] in "\"'" else '"'
    return f"{found.group()[:start]}{quote}{REDACTED}{quote}{found.group()[end:]}"


def _blanked_members(text: str) -> str:
    """`text` with the value of each member whose key looks secret blanked. After a member whose key does not,
    the search goes on inside its value (`s = "{\\"password\\": …}"`, `url: https://x/?token=…`). Each place is
    tried as a member's start once (the search only moves forward), and two bare values never overlap (each
    stops at the `:` or `=` before the next): linear."""
    parts: list[str] = []
    done = position = 0
    names_a_secret = False  # the member before named a secret (`"name": "X-Api-Key"`): its `"value": …` is one
    while (member := _MEMBER.search(text, position)) is not None:
        key, value, start = member.group("key"), member.group("value"), member.start("value")
        quoted = value[0] in "\"'\\"
        if _is_secret_key(key) or _is_secret_by_place(text, member.start(), key, names_a_secret):
            end = member.end() if quoted else _secret_end(text, key, value, start)
            parts += [text[done:start], _blank(key, value)]
            done = position = end
            names_a_secret = False
            continue
        names_a_secret = (
            quoted and len(key) <= _PAIR_KEY_CHARS and _unquoted(key) in _PAIR_NAMES and _names_secret(value)
        )
        # Past a quoted value's opening quote (`"`, `'`, `\"`): the string's text is searched.
        position = start + (2 if value[0] == "\\" else 1) if quoted else start
    parts.append(text[done:])
    return "".join(parts)


def _is_secret_by_place(text: str, start: int, key: str, after_secret_name: bool) -> bool:
    """Whether the member whose innocent `key` starts at `start` holds a secret all the same: it is a URL query's
    signature (`&X-Amz-Signature=`), or the value of a pair whose name was a secret's."""
    if after_secret_name and _unquoted(key) in _PAIR_VALUES:
        return True
    return start > 0 and text[start - 1] in "?&" and _QUERY_SIGNATURE.fullmatch(key) is not None


def _names_secret(name: str) -> bool:
    """Whether a pair's name (its first characters: a 4 MB one costs no more than a real one) is a secret's."""
    return _is_secret_key(name[:_PAIR_NAME_CHARS])


def _unquoted(key: str) -> str:
    """A member's key without its quotes (`"name"`, `'name'`, `\\"name\\"`)."""
    return key.strip("\\\"'")


def _secret_end(text: str, key: str, value: str, start: int) -> int:
    """Where a secret's unquoted value ends: an object's or list's closing bracket; else its bare run's end, and
    past the credential after it when the run is an auth scheme (`Authorization: Basic dXNl…`)."""
    if value in "[{":
        return _bracket_end(text, start)
    run = _BARE_RUN.match(text, start)
    assert run is not None  # `*+` matches the empty run
    if _AUTHORIZATION.search(key) or run.group().lower() in _SCHEMES:
        credentials = _CREDENTIALS.match(text, run.end())
        if credentials is not None:
            return credentials.end()
    return run.end()


def _bracket_end(text: str, start: int) -> int:
    """The end of the object or list opening at `start`: past its closing bracket, the brackets inside strings
    not counted; the end of the text when it never closes (cut short, or not code)."""
    depth = 0
    for token in _NESTING.finditer(text, start):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
        elif bracket in ("]", "}"):
            depth -= 1
            if depth == 0:
                return token.end()
    return len(text)


def _blank(key: str, value: str) -> str:
    """`[REDACTED]` quoted as `value` was; a bare value (or an object or a list) of a JSON member quoted as a JSON
    string."""
    quote = '\\"' if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    if not quote and key.startswith(('"', '\\"')):
        quote = '\\"' if key.startswith('\\"') else '"'
    return f"{quote}{REDACTED}{quote}"
