"""One embedding model per run, shared by every method: each distinct document text is embedded once.

`SharedEmbedder` wraps the optimizer's `Embedder` (`vmcp_opt.optimizer.embedding.load_embedder`) and keeps
the vectors of every document text it has encoded, in memory and on disk (`<out>/cache/`), so the dense
baseline, the ToolHive baseline and the optimizer's own index reuse them and a second run embeds nothing.
Queries are never cached: each method pays for its query embedding, so latencies stay honest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class EmbedderLike(Protocol):
    model_id: str
    dimensions: int

    def encode_queries(self, texts: Sequence[str]) -> Vectors: ...

    def encode_documents(self, texts: Sequence[str], progress: bool = False) -> Vectors: ...


class SharedEmbedder:
    def __init__(
        self, inner: Any, cache_dir: Path | None = None, query_threads: int = 1, bulk_threads: int = 1
    ) -> None:
        self.inner = inner
        # Deliberate thread counts: with anything else on the other core, 2 torch threads were 4-8x slower
        # than 1 here (spinning workers contend), for one query and for bulk encoding alike.
        self.query_threads = query_threads
        self.bulk_threads = bulk_threads
        self.model_id: str = str(inner.model_id)
        self.dimensions: int = int(inner.dimensions)
        self.cache_dir = cache_dir
        self._vectors: dict[str, Vectors] = {}
        self.embedded = 0
        # Tuning only (`eval/tune.py`): reuse query vectors across configurations. Off for timed runs.
        self.query_cache: dict[str, Vectors] | None = None
        # True while a query is being timed: it then pays for its own embedding.
        self.bypass_cache = False

    def __getattr__(self, name: str) -> Any:
        # Anything else the optimizer's index asks of an embedder (spec, batch_size...) comes from the model.
        return getattr(self.inner, name)

    def encode_queries(self, texts: Sequence[str]) -> Vectors:
        if self.query_cache is not None and not self.bypass_cache:
            cache = self.query_cache
            missing = [text for text in dict.fromkeys(texts) if text not in cache]
            if missing:
                with torch_threads(self.query_threads):
                    vectors = np.asarray(self.inner.encode_queries(missing), dtype=np.float32)
                cache.update(zip(missing, vectors, strict=True))
            return np.stack([cache[text] for text in texts]) if texts else np.empty((0, self.dimensions), np.float32)
        with torch_threads(self.query_threads):
            return np.asarray(self.inner.encode_queries(list(texts)), dtype=np.float32)

    def prime_queries(self, texts: Sequence[str], batch_size: int = 64) -> None:
        """Embed many queries in batches (several times faster than one by one) into the query cache."""
        if self.query_cache is None:
            self.query_cache = {}
        missing = [text for text in dict.fromkeys(texts) if text not in self.query_cache]
        with torch_threads(self.query_threads):
            for start in range(0, len(missing), batch_size):
                batch = missing[start : start + batch_size]
                vectors = np.asarray(self.inner.encode_queries(batch), dtype=np.float32)
                self.query_cache.update(zip(batch, vectors, strict=True))

    def encode_documents(self, texts: Sequence[str], progress: bool = False) -> Vectors:
        texts = list(texts)
        missing = [text for text in dict.fromkeys(texts) if _key(text) not in self._vectors]
        if missing:
            self._load_from_disk(missing)
            missing = [text for text in missing if _key(text) not in self._vectors]
        if missing:
            with torch_threads(self.bulk_threads):
                vectors = np.asarray(self.inner.encode_documents(missing, progress=progress), dtype=np.float32)
            self.embedded += len(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._vectors[_key(text)] = vector
            self._save_to_disk(missing, vectors)
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        return np.stack([self._vectors[_key(text)] for text in texts]).astype(np.float32)

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in self.model_id)
        return self.cache_dir / f"{safe}.npz"

    def _load_from_disk(self, texts: list[str]) -> None:
        path = self._cache_file()
        if path is None or not path.exists() or getattr(self, "_disk_loaded", False):
            return
        self._disk_loaded = True
        with np.load(path) as data:
            for key, vector in zip(data["keys"], data["vectors"], strict=True):
                self._vectors.setdefault(str(key), vector.astype(np.float32))

    def _save_to_disk(self, texts: list[str], vectors: Vectors) -> None:
        path = self._cache_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="U64")
        stacked = np.stack(list(self._vectors.values())).astype(np.float32)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=stacked)
        tmp.replace(path)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_shared_embedder(
    model: str, bulk_bfloat16: bool, cache_dir: Path | None, query_threads: int = 1
) -> SharedEmbedder:
    """The optimizer's configured model, loaded offline the way the gateway loads it."""
    from vmcp_opt.optimizer.embedding import load_embedder

    inner = load_embedder(model, bulk_bfloat16=bulk_bfloat16, progress=False)
    return SharedEmbedder(inner, cache_dir, query_threads=query_threads, bulk_threads=query_threads)
