"""Token counts with the embedding model's own tokenizer: what a tool list costs an agent, measured offline.

Loads only `tokenizer.json` through the `tokenizers` library (no torch, no transformers), once per model.
`tools_list_tokens` is the one definition of a tool list's cost: the server's log and find_tool's
`full_tool_list`, and `vmcp index stats`, all count the tools' JSON as `tools/list` puts it on the wire.
find_tool's `this_answer` is its whole answer's text (`answer_text`), figures included (`AnswerTokens.figures`).
A word too long for WordPiece, which it encodes as one `[UNK]`, is counted as its pieces (`LONG_WORD_PIECE`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import mcp_types as types

from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, ModelError, resolve_model

_lock = threading.Lock()


def answer_json(value: Any) -> str:
    """`value` as find_tool's answer writes it for counting: non-ASCII as written, not `\\u` escapes (the
    separators' spaces add no tokens: the pre-tokenizer splits at whitespace)."""
    return json.dumps(value, ensure_ascii=False)


def answer_text(answer: Mapping[str, Any]) -> str:
    """find_tool's answer as its text content carries it: compact (`indent` turns off json's C encoder, and
    newlines and spaces cost a client's LLM tokens for nothing), non-ASCII as written (a `\\u` escape per
    character made a Chinese description four times the tokens)."""
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False)


def token_figures(full_list: int | None, this_answer: int) -> dict[str, int]:
    """find_tool's `tokens`: the answer's own, and, when the caller's full list is known, it and the difference."""
    if full_list is None:
        return {"this_answer": this_answer}
    return {"full_tool_list": full_list, "this_answer": this_answer, "saved": max(0, full_list - this_answer)}


@cache
def _tokenizer(model_spec: str) -> Any:
    from tokenizers import Tokenizer

    path = resolve_model(model_spec).path / "tokenizer.json"
    if not path.exists():
        raise ModelError(f"model {model_spec!r}: no tokenizer.json in {path.parent}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


# A word longer than WordPiece's `max_input_chars_per_word` (100 for the default model) encodes as one `[UNK]`: a
# 4,096-character one-word query counted as one token, and find_tool's `saved` grew by what it echoed. Such a word
# is counted as its pieces of this many characters, each a word of its own, rather than with the limit raised: the
# longest-match search is quadratic in a word's length per token (a random 4,096-character word: ~3 s with the
# limit raised; ~30 ms in pieces of 32, and within 1% of that count). The embedding model's own tokenizer
# (optimizer/batching.py, what the model reads) is another object, left as it is.
LONG_WORD_PIECE = 32


@cache
def _long_word_unk(model_spec: str) -> tuple[int, int] | None:
    """The id of `[UNK]` and the most characters of a word the model encodes (a WordPiece model's), else None."""
    tokenizer = _tokenizer(model_spec)
    limit = getattr(tokenizer.model, "max_input_chars_per_word", None)
    unk = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if isinstance(unk, str) else None
    return (unk_id, limit) if isinstance(unk_id, int) and isinstance(limit, int) else None


def _long_words(text: str, encoding: Any, unk: tuple[int, int]) -> list[str]:
    """The words of `text` that `encoding` (of `text`) holds as one `[UNK]` for their length (a short word
    with a character the vocabulary lacks is an `[UNK]` too, and one token it stays)."""
    unk_id, limit = unk
    ids: list[int] = encoding.ids
    words: list[str] = []
    position = -1
    while True:
        try:
            position = ids.index(unk_id, position + 1)  # a scan in C: a long text has few `[UNK]` if any
        except ValueError:
            return words
        start, end = encoding.token_to_chars(position)
        if end - start > limit:
            words.append(text[start:end])


def _counted(tokenizer: Any, unk: tuple[int, int] | None, texts: Sequence[str], encodings: Sequence[Any]) -> list[int]:
    """Tokens of each of `texts` (`encodings` are theirs), each long word's `[UNK]` replaced by its pieces'
    tokens, counted in one `encode_batch` (which leaves the GIL to other threads)."""
    counts = [len(encoding.ids) for encoding in encodings]
    if unk is None:
        return counts
    found = [(i, word) for i, text in enumerate(texts) for word in _long_words(text, encodings[i], unk)]
    if not found:
        return counts
    pieces = [
        " ".join(word[at : at + LONG_WORD_PIECE] for at in range(0, len(word), LONG_WORD_PIECE)) for _, word in found
    ]
    for (i, _), encoding in zip(found, tokenizer.encode_batch(pieces, add_special_tokens=False), strict=True):
        counts[i] += len(encoding.ids) - 1
    return counts


def count_tokens(text: str, model_spec: str = DEFAULT_MODEL) -> int:
    """Tokens in `text` (no special tokens, no truncation; a long word as its pieces: `LONG_WORD_PIECE`)."""
    if not text:
        return 0
    with _lock:
        tokenizer, unk = _tokenizer(model_spec), _long_word_unk(model_spec)
    return _counted(tokenizer, unk, [text], [tokenizer.encode(text, add_special_tokens=False)])[0]


# Texts per `encode_batch` call. The tokenizer releases the GIL for a batch but holds it through one `encode`:
# one `encode` of a 10k-tool list (3.7 MB of JSON) held it ~6 s, and the gateway's event loop stood still.
COUNT_BATCH = 256


def count_tokens_each(texts: Sequence[str], model_spec: str = DEFAULT_MODEL) -> list[int]:
    """Tokens in each of `texts` (as `count_tokens`), counted in batches that leave the GIL to other threads."""
    with _lock:
        tokenizer, unk = _tokenizer(model_spec), _long_word_unk(model_spec)
    counts: list[int] = []
    for start in range(0, len(texts), COUNT_BATCH):
        batch = list(texts[start : start + COUNT_BATCH])
        counts.extend(_counted(tokenizer, unk, batch, tokenizer.encode_batch(batch, add_special_tokens=False)))
    return counts


def tools_list_tokens(tools: Sequence[types.Tool], model_spec: str = DEFAULT_MODEL) -> int:
    """What an agent reads when a `tools/list` answer holds `tools`: the tokens of their JSON list as it goes on
    the wire, counted tool by tool. The pre-tokenizer splits at JSON punctuation (as `AnswerTokens` relies on),
    so the list's count is its tools' plus `[`, `]` and the commas between them."""
    return ToolListTokens.count({str(i): tool for i, tool in enumerate(tools)}, model_spec).total


class ToolListTokens:
    """What `tools/list` costs for a catalogue's tools, counted once (`count`, on a worker thread), and for
    the subset of them a caller may use (`of`): find_tool's `full_tool_list` tells a restricted caller the
    size of its own list, not of the whole catalogue. Immutable but for its cache; one per catalogue."""

    # Callers' usable sets whose count is kept: one per principal (routing/views.py), dropped oldest first.
    KEPT = 512

    def __init__(self, by_name: Mapping[str, int], marks: tuple[int, int, int, int]) -> None:
        self._by_name = by_name  # each tool's JSON tokens, by the name callers use
        self._marks = marks  # `[`, `]`, `,` and `[]`
        self.total = self._list(by_name.values(), len(by_name))
        # By the usable set's identity, the set itself held so that its id is not reused.
        self._of: dict[int, tuple[frozenset[str], int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def count(cls, tools: Mapping[str, types.Tool], model_spec: str = DEFAULT_MODEL) -> ToolListTokens:
        wire = (tool.model_dump(by_alias=True, mode="json", exclude_none=True) for tool in tools.values())
        tools_json = [json.dumps(fields, separators=(",", ":"), ensure_ascii=False) for fields in wire]
        opening, closing, comma, empty = count_tokens_each(["[", "]", ",", "[]"], model_spec)
        by_name = dict(zip(tools, count_tokens_each(tools_json, model_spec), strict=True))
        return cls(by_name, (opening, closing, comma, empty))

    def of(self, usable: frozenset[str] | None) -> int:
        """The tokens of the list of the tools in `usable` (None: all of them). O(len(usable)) the first time
        for a set; the router keeps one set per principal and catalogue, so later calls are a lookup."""
        if usable is None:
            return self.total
        kept = self._of.get(id(usable))
        if kept is not None and kept[0] is usable:
            return kept[1]
        counts = [self._by_name[name] for name in usable if name in self._by_name]
        tokens = self._list(counts, len(counts))
        with self._lock:
            if len(self._of) >= self.KEPT:
                self._of.pop(next(iter(self._of)))
            self._of[id(usable)] = (usable, tokens)
        return tokens

    def _list(self, counts: Iterable[int], size: int) -> int:
        opening, closing, comma, empty = self._marks
        return opening + closing + (size - 1) * comma + sum(counts) if size else empty


def saving(full: int, optimized: int) -> str:
    """`optimized` against `full` in words: "(98.1% fewer)", or "(12.0% more)" for a catalogue smaller than
    the meta-tools."""
    if not full:
        return ""
    change = 100 * (optimized - full) / full
    return (
        f"({-change:.1f}% fewer)"
        if change <= 0
        else f"({change:.1f}% more: the catalogue is smaller than the meta-tools)"
    )


class AnswerTokens:
    """Tokens of find_tool's result list, without tokenizing each tool's description and schema per query, and
    of the whole answer around it (`figures`: query, notes, the figures themselves).

    Counting a whole answer took ~6 ms per find_tool (8 results of ~800 characters each) on this machine,
    more than the search. The tokenizer's pre-tokenizer splits at JSON punctuation (WordPiece, as the
    default model's; a byte-level BPE may differ by a token at a seam), so the count of
    `[r1, r2, …]` is the sum of its parts: the brackets and commas, and each result's JSON, which is the
    part that depends only on its tool (`tool_part`, counted once and kept) followed by what depends on the
    query (score, links: a few tokens). A part whose result does not start with it is counted whole.

    Kept for at most `max_tools` tool texts (oldest dropped first); `warm` counts a catalogue's ahead of
    the first queries, off the event loop. Thread-safe: the embedder thread warms while find_tool reads.
    """

    def __init__(self, model_spec: str = DEFAULT_MODEL, max_tools: int = 20_000, max_by_part: int = 20_000) -> None:
        self.model_spec = model_spec
        self.max_tools = max_tools
        # hash of the tool part's text (its JSON without the closing brace) -> its tokens
        self._parts: dict[int, int] = {}
        # The same by the part object (find_tool's kept `ToolParts`), held so its id is not reused: a query's
        # 8 parts need no serialising to be looked up (16 `json.dumps` of schemas per answer before).
        self._by_part: dict[int, tuple[dict[str, Any], int]] = {}
        self.max_by_part = max_by_part
        self._parts_lock = threading.Lock()
        # Tokens of `[`, `]`, `, `, `[]` and `,"tokens":`: counted once, not tokenizer calls per answer.
        self._marks: tuple[int, int, int, int, int] | None = None
        # The figures' tokens but their numbers', by their keys, and numbers' tokens (`_settled`).
        self._shapes: dict[tuple[str, ...], int] = {}
        self._numbers: dict[int, int] = {}

    def count(self, results: Sequence[dict[str, Any]], tool_parts: Sequence[dict[str, Any]]) -> int:
        """Tokens of `answer_json(results)`; `tool_parts[i]` is the query-independent start of `results[i]`:
        its tokens are kept, and only the rests (score, links) are tokenized, in one call."""
        if not results:
            return self._counted_marks()[3]
        total = self._punctuation(len(results))
        rests = []
        for result, part in zip(results, tool_parts, strict=True):
            rest = _rest(result, part)
            if rest is None:  # not the part followed by keys of its own: the whole result
                rests.append(answer_json(result))
                continue
            total += self._part_tokens_by_identity(part)
            rests.append(rest)
        # The pre-tokenizer splits at whitespace as at punctuation: the joined rests count as their sum.
        return total + count_tokens(" ".join(rests), self.model_spec)

    def _part_tokens_by_identity(self, part: dict[str, Any]) -> int:
        kept = self._by_part.get(id(part))
        if kept is not None and kept[0] is part:
            return kept[1]
        tokens = self._part_tokens(answer_json(part)[:-1])
        with self._parts_lock:
            self._keep_part(part, tokens)
        return tokens

    def _keep_part(self, part: dict[str, Any], tokens: int) -> None:
        """Under `_parts_lock`."""
        if len(self._by_part) >= self.max_by_part:
            self._by_part.pop(next(iter(self._by_part)), None)
        self._by_part[id(part)] = (part, tokens)

    def all_known(self, tool_parts: Sequence[dict[str, Any]]) -> bool:
        """Whether `count` needs the tokenizer only for the short query-dependent rests."""
        with self._parts_lock:
            return all(hash(answer_json(part)[:-1]) in self._parts for part in tool_parts)

    def warm(self, tool_parts: Iterable[dict[str, Any]], stop: Callable[[], bool]) -> int:
        """Count tool parts ahead of the queries that show them, up to `max_tools` or until `stop()`: in
        batches, which the tokenizer runs without the GIL, so find_tool's threads are not held up meanwhile.
        Each part is kept by identity too, so an answer showing it (`ToolParts` hands out the same objects)
        serialises nothing: ~0.2 ms of a find_tool answer at 10k tools, whose hits were mostly not kept."""
        counted = 0
        batch: list[tuple[dict[str, Any], str]] = []
        for part in tool_parts:
            if counted + len(batch) >= self.max_tools or stop():
                break
            batch.append((part, answer_json(part)[:-1]))
            if len(batch) == COUNT_BATCH:
                counted += self._count_batch(batch)
                batch = []
        return counted + self._count_batch(batch)

    def _count_batch(self, batch: list[tuple[dict[str, Any], str]]) -> int:
        with self._parts_lock:
            new = [prefix for _, prefix in batch if hash(prefix) not in self._parts]
        for prefix, tokens in zip(new, count_tokens_each(new, self.model_spec), strict=True):
            self._keep(hash(prefix), tokens)
        with self._parts_lock:
            for part, prefix in batch:
                known = self._parts.get(hash(prefix))
                if known is not None:
                    self._keep_part(part, known)
        return len(batch)

    def _part_tokens(self, prefix: str) -> int:
        key = hash(prefix)
        with self._parts_lock:
            known = self._parts.get(key)
        if known is not None:
            return known
        tokens = count_tokens(prefix, self.model_spec)
        self._keep(key, tokens)
        return tokens

    def _keep(self, key: int, tokens: int) -> None:
        with self._parts_lock:
            if len(self._parts) >= self.max_tools:
                del self._parts[next(iter(self._parts))]
            self._parts[key] = tokens

    # Tokens a figure's number can be (1234567 is 4 with the default model; a list of 10k tools is 7 digits).
    NUMBER_TOKENS_MOST = 6
    # Numbers whose tokens are kept: answer sizes, and the differences from the few full lists' sizes.
    KEPT_NUMBERS = 16_384

    def figures(self, answer: Mapping[str, Any], tools_tokens: int, full_list: int | None) -> dict[str, int]:
        """The `tokens` member to end `answer` with, its `this_answer` counting the whole of `answer_text` as a
        client receives it (the text; the structured content is the same object, read instead of it, not
        besides). `tools_tokens`: `count` of `answer["tools"]`, whose parts are kept; only the rest is
        tokenized here, as `answer` with an empty list less `[]` (the query can be 4,096 characters), plus the
        member `,"tokens":{…}` itself. `answer` holds no `tokens` yet."""
        _, _, _, empty, key = self._counted_marks()
        rest = count_tokens(answer_text({**answer, "tools": []}), self.model_spec) - empty
        return self._settled(tools_tokens + rest + key, full_list)

    def _settled(self, base: int, full_list: int | None) -> dict[str, int]:
        """The figures for an answer of `base` tokens besides them. They are part of what they count and a
        number's tokens change with its digits, so their own tokens (`own`) are looked for among the few they
        can be: the least that the text agrees with; when none does (claiming 379, two tokens, makes 380,
        claiming 380, one token, 379), the least over-count: an answer is never under-counted."""
        keys = tuple(token_figures(full_list, 0))
        shape = self._shape(keys)
        owns = range(shape + len(keys), shape + len(keys) * self.NUMBER_TOKENS_MOST + 1)
        candidates = [token_figures(full_list, base + own) for own in owns]
        numbers = self._number_tokens({number for figures in candidates for number in figures.values()})
        over = None
        for own, figures in zip(owns, candidates, strict=True):
            held = shape + sum(numbers[number] for number in figures.values())
            if held == own:
                return figures
            if held < own and over is None:
                over = figures
        return over or candidates[-1]

    def _shape(self, keys: tuple[str, ...]) -> int:
        """Tokens of the figures' text but their numbers' (the pre-tokenizer splits at the `:` and `,` around
        them), counted once per set of keys."""
        shape = self._shapes.get(keys)
        if shape is None:
            zeros = count_tokens(answer_text(dict.fromkeys(keys, 0)), self.model_spec)
            shape = self._shapes[keys] = zeros - len(keys) * self._number_tokens({0})[0]
        return shape

    def _number_tokens(self, numbers: set[int]) -> dict[int, int]:
        """Each number's tokens, the ones not kept counted in one tokenizer call."""
        known = {number: self._numbers.get(number) for number in numbers}
        new = [number for number, tokens in known.items() if tokens is None]
        counted = dict(zip(new, count_tokens_each([str(n) for n in new], self.model_spec), strict=True))
        if counted:
            with self._parts_lock:
                for number, tokens in counted.items():
                    if len(self._numbers) >= self.KEPT_NUMBERS:
                        self._numbers.pop(next(iter(self._numbers)), None)
                    self._numbers[number] = tokens
        return {number: tokens for number, tokens in known.items() if tokens is not None} | counted

    def _punctuation(self, results: int) -> int:
        """`[`, `]` and the `, ` between results."""
        opening, closing, comma, _, _ = self._counted_marks()
        return opening + closing + (results - 1) * comma

    def _counted_marks(self) -> tuple[int, int, int, int, int]:
        marks = self._marks
        if marks is None:
            counts = count_tokens_each(["[", "]", ", ", "[]", ',"tokens":'], self.model_spec)
            marks = self._marks = (counts[0], counts[1], counts[2], counts[3], counts[4])
        return marks


def _rest(result: dict[str, Any], part: dict[str, Any]) -> str | None:
    """What `answer_json(result)` has after `answer_json(part)[:-1]` when `result` is `part`'s items (the same
    objects) followed by keys of its own, as `hit_json` builds it; else None."""
    if not part or len(result) < len(part):
        return None
    keys = iter(result)
    for key, value in part.items():
        if next(keys) != key or result[key] is not value:
            return None
    own = {key: result[key] for key in keys}
    return ", " + answer_json(own)[1:] if own else "}"
