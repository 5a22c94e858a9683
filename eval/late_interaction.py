"""Late-interaction re-ranking: every query token meets its best-matching document token (MaxSim).

A pooled sentence vector averages a whole tool document into one point, so a request that names one
parameter or one capability among many matches it only weakly. Comparing token by token (ColBERT's
MaxSim, here over the same model's contextual token embeddings, no extra model) keeps those matches. It
re-ranks the fused candidates of the two first-stage arms. On the ToolLens dev split it added +1.9
nDCG@10 over the fused ranking, but on the held-out ToolRet sets it lost 1.2-2.3 points on three of four
(eval/README.md), so it is not part of the gateway: it lives here, as a `Reranker`
(`vmcp_opt/optimizer/rerank.py`) that the `optimizer-late-interaction` method (and `eval.tune`'s
`late-interaction*` variants, `bench/optimizer.py`) hand to `ToolIndex`.

Token matrices are stored float16 (≈ 37 KB per tool of 50 tokens at 384 dimensions). They come from the
model's forward pass next to the sentence vectors; `SharedEmbedder` (eval/embed.py) keeps those of every
document text, so an index built from its cache embeds nothing again, but each query is embedded a second
time for its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from vmcp_opt.optimizer.ranking import Ranking, minmax

TokenMatrix = npt.NDArray[np.float16]
STORED_DTYPE = np.float16


@dataclass(frozen=True)
class TokenStore:
    """Token embeddings of many documents: rows `tokens[offsets[i]:offsets[i + 1]]` belong to document i."""

    tokens: npt.NDArray[np.float16] = field(default_factory=lambda: np.zeros((0, 0), dtype=STORED_DTYPE))
    offsets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    @classmethod
    def from_matrices(cls, matrices: Sequence[np.ndarray], dims: int) -> TokenStore:
        lengths = np.fromiter((len(m) for m in matrices), dtype=np.int64, count=len(matrices))
        offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        nonempty = [m for m in matrices if len(m)]
        tokens = (
            np.concatenate(nonempty).astype(STORED_DTYPE, copy=False)
            if nonempty
            else np.zeros((0, dims), dtype=STORED_DTYPE)
        )
        return cls(tokens, offsets)

    def matrix(self, doc: int) -> TokenMatrix:
        return self.tokens[self.offsets[doc] : self.offsets[doc + 1]]

    def has_tokens(self, doc: int) -> bool:
        return bool(self.offsets[doc + 1] > self.offsets[doc])

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.offsets.nbytes)

    def maxsim(self, query: np.ndarray, docs: Sequence[int]) -> dict[int, float]:
        """Mean over query tokens of the best cosine with any token of each document in `docs`.

        Documents without tokens (not embedded yet) are left out of the answer.
        """
        docs = [doc for doc in docs if self.has_tokens(doc)]
        if not docs or not len(query):
            return {}
        spans = [(int(self.offsets[d]), int(self.offsets[d + 1])) for d in docs]
        gathered = np.concatenate([self.tokens[a:b] for a, b in spans]).astype(np.float32)
        starts = np.cumsum([0] + [b - a for a, b in spans[:-1]])
        sims = query.astype(np.float32, copy=False) @ gathered.T  # (query tokens, candidate tokens)
        best = np.maximum.reduceat(sims, starts, axis=1)  # (query tokens, docs)
        return dict(zip(docs, best.mean(axis=0).tolist(), strict=True))


def blend(late: Ranking, sparse: Ranking, late_weight: float, candidates: Sequence[int]) -> Ranking:
    """Re-ranking scores of `candidates`: min-max scaled late-interaction scores blended with the keyword
    arm's (scaled over the arm's whole candidate list, so a document it ranked low stays low)."""
    late_n, sparse_n = minmax(late), minmax(sparse)
    keyword_weight = 1.0 - late_weight
    return {doc: late_weight * late_n.get(doc, 0.0) + keyword_weight * sparse_n.get(doc, 0.0) for doc in candidates}


class TokenEmbedder(Protocol):
    """What late interaction asks of a model: `Embedder` and eval's `SharedEmbedder` both have it."""

    dimensions: int

    def encode_queries_with_tokens(
        self, texts: Sequence[str], *, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def encode_documents_with_tokens(
        self, texts: Sequence[str], *, progress: bool = False, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


class LateInteraction:
    """The `Reranker`: each fused candidate re-scored by MaxSim, blended with the keyword arm at `weight`.

    All candidates rather than a head: a re-ranked head over an unranked tail would need two score
    scales, and ~150 candidates cost a few milliseconds."""

    def __init__(self, embedder: TokenEmbedder, weight: float = 0.7) -> None:
        self.embedder = embedder
        self.weight = weight

    def prepare(self, documents: Sequence[str]) -> LateInteractionStage:
        _, matrices = self.embedder.encode_documents_with_tokens(documents, tokens=True)
        tokens = TokenStore.from_matrices(matrices, self.embedder.dimensions)
        return LateInteractionStage(tokens, self.embedder, self.weight)


@dataclass(frozen=True)
class LateInteractionStage:
    """The token embeddings of one index snapshot's documents, by position."""

    tokens: TokenStore
    embedder: TokenEmbedder
    weight: float

    def rerank(self, queries: Sequence[str], fused: Sequence[Ranking], sparse: Sequence[Ranking]) -> list[Ranking]:
        _, query_tokens = self.embedder.encode_queries_with_tokens(list(queries), tokens=True)
        reranked = []
        for candidates, keyword, query in zip(fused, sparse, query_tokens, strict=True):
            late = self.tokens.maxsim(query, list(candidates))
            reranked.append(blend(late, keyword, self.weight, list(candidates)) if late else candidates)
        return reranked
