"""Late-interaction re-ranking: every query token meets its best-matching document token (MaxSim).

A pooled sentence vector averages a whole tool document into one point, so a request that names one
parameter or one capability among many matches it only weakly. Comparing token by token (ColBERT's
MaxSim, here over the same model's contextual token embeddings, no extra model) keeps those matches. It
re-ranks the fused candidates of the two first-stage arms (`optimizer.rerank: late-interaction`). On the
ToolLens dev split it added +1.9 nDCG@10 over the fused ranking, but on the held-out ToolRet sets it lost
1.2-2.3 points on three of four, so it is opt-in (eval/README.md).

Token matrices come out of the same forward pass as the sentence vectors, so indexing costs no extra
model time; they are stored float16 (≈ 37 KB per tool of 50 tokens at 384 dimensions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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

    def __len__(self) -> int:
        return len(self.offsets) - 1

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
