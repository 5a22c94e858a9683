"""Query embeddings kept by text: agents repeat find_tool queries, and embedding one is most of a search."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from vmcp_opt.optimizer.embedding import TextEmbedder


class QueryCache:
    """Query text -> vector, least recently used first, at most `size` of them (0 keeps none).

    Safe to share between threads: lookups and inserts are locked, embedding runs outside the lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, embedder: TextEmbedder, texts: list[str]) -> np.ndarray:
        """One row per text: cached ones as they are, the others embedded in one batch and kept."""
        with self._lock:
            cached = [self._vectors.get(text) for text in texts]
            for text, hit in zip(texts, cached, strict=True):
                if hit is not None:
                    self._vectors.move_to_end(text)
        missing = [text for text, hit in zip(texts, cached, strict=True) if hit is None]
        if missing:
            vectors = embedder.encode_queries(missing)
            # Copies: a row kept as a view would keep its whole request's array (up to five rows) alive.
            fresh = {text: vectors[i].copy() for i, text in enumerate(missing)}
            with self._lock:
                for text, vector in fresh.items():
                    self._vectors[text] = vector
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
            cached = [fresh.get(text, hit) for text, hit in zip(texts, cached, strict=True)]
        return np.stack([vector for vector in cached if vector is not None])
