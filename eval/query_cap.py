"""Query-length variants for the vector arm (issue 19, goal 3): what capping the query texts costs in quality.

The vector arm's query embedding grows with the request's tokens, so a long request sets find_tool's p95.
`CappedQueries` wraps the embedder an `OptimizerMethod` hands its `ToolIndex` and shortens the texts the
vector arm embeds; the keyword arm still reads every word (it never sees the embedder). Two knobs:

- `QUERY_CAP` (`cap`): every query text cut to its first `cap` tokens, [CLS] and [SEP] included;
- `WHOLE_CAP` (`whole`): the whole request, when it holds several intents (`ranking.split_intents`), cut to
  `whole` tokens instead; 0 drops its vector (a zero vector: that variant's vector arm scores every tool
  0, so the whole request ranks by its keyword arm alone, at the keyword arm's fused weight).

A text is cut at a word boundary: the words whose every token falls within the cap, so the cut text
tokenizes to exactly the first tokens of the whole text. Cut texts are plain strings, so the shared query
cache (keyed by text) stays right across variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking

# Not OptimizerConfig fields: eval/methods.py pops them and wraps the embedder in `CappedQueries`.
QUERY_CAP = "query_cap"
WHOLE_CAP = "whole_cap"


class TokenCutter:
    """Cuts texts to their first whole words of at most `cap` tokens, counted as the model tokenizes."""

    def __init__(self, tokenizer_file: str, prefix: str = "") -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(tokenizer_file)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._prefix = prefix

    def count(self, text: str) -> int:
        """Tokens the encoder runs for `text` (prefix, [CLS] and [SEP] included), before its own truncation."""
        return len(self._tokenizer.encode(self._prefix + text).ids)

    def cut(self, text: str, cap: int) -> str:
        encoding = self._tokenizer.encode(self._prefix + text)
        if len(encoding.ids) <= cap:
            return text
        special = sum(encoding.special_tokens_mask)
        keep = max(cap - special, 0)  # content tokens left once [CLS] and [SEP] are counted
        words = encoding.word_ids
        content = [i for i, mask in enumerate(encoding.special_tokens_mask) if not mask]
        # The first content token not kept; back off to the start of its word when the word is split.
        first_out = content[keep]
        while keep > 0 and words[content[keep - 1]] == words[first_out]:
            keep -= 1
        if keep == 0:
            return ""
        end = encoding.offsets[content[keep - 1]][1] - len(self._prefix)
        return text[:end].rstrip()


class CappedQueries:
    """An embedder whose `encode_queries` embeds each text cut as configured; everything else delegates."""

    def __init__(self, inner: Any, cutter: TokenCutter, config: OptimizerConfig, cap: int, whole: int | None) -> None:
        self.inner = inner
        self.cutter = cutter
        self.config = config
        self.cap = cap
        self.whole = whole

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def limit(self, text: str) -> int:
        """The cap for one query text: `whole` for a multi-intent request (when set), else `cap`."""
        text = text.strip()
        multi = self.config.split_intents and ranking.split_intents(text, max_intents=self.config.max_intents) != [text]
        return self.whole if self.whole is not None and multi else self.cap

    def cut(self, texts: Sequence[str]) -> list[tuple[int, str]]:
        """The texts the vector arm embeds, cut, with their positions (a dropped text, cap 0, is left out)."""
        limits = [self.limit(text) for text in texts]
        return [(i, self.cutter.cut(texts[i], limit)) for i, limit in enumerate(limits) if limit]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        kept = self.cut(texts)
        out = np.zeros((len(texts), int(self.inner.dimensions)), dtype=np.float32)
        if kept:
            out[[i for i, _ in kept]] = self.inner.encode_queries([text for _, text in kept])
        return out


def capped(embedder: Any, config: OptimizerConfig, cap: int | None, whole: int | None) -> Any:
    """`embedder` itself when neither knob is set, else wrapped in `CappedQueries`."""
    if cap is None and whole is None:
        return embedder
    spec = embedder.spec
    cutter = TokenCutter(str(spec.path / "tokenizer.json"), spec.query_prefix)
    return CappedQueries(embedder, cutter, config, cap if cap is not None else 10**6, whole)
