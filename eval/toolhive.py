"""A re-implementation of ToolHive vMCP's optimizer ranking, for comparison (issue 5, item 5).

Read from stacklok/toolhive `pkg/vmcp/optimizer/internal/toolstore/sqlite_store.go` and `schema.sql`:

- Keyword arm: an SQLite FTS5 table over (name, description) with `tokenize='porter'`, ranked by FTS5's
  built-in BM25 (`ORDER BY rank`).
- Semantic arm: cosine distance (1 - cosine) between the query embedding (the query text as is) and the
  embedding of `"name: {name} description: {description}"`; rows with distance > 1.0 are dropped.
- Hybrid: for a result list of size N, `round(N * 0.5)` slots go to the semantic arm (Go's `math.Round`,
  half away from zero) and the rest to the keyword arm; semantic results first in distance order, then
  keyword results in BM25 order, duplicates removed, truncated to N. Nothing back-fills a short arm.

Keyword query: the issue describes it as the query's whitespace-separated words minus a fixed list of
schema words, each double-quoted and OR-joined (`mode="issue"`, the `toolhive` method). The Go source
itself does something harsher: when *any* of those words is present (or the query is one word) the whole
query becomes one quoted phrase; only otherwise are the words quoted and OR-joined (`mode="source"`, the
`toolhive-phrase` method). Both are kept so the comparison can be made against either reading.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

# ToolHive's `problematicWords` (aligned there with the Python mcp_optimizer's list).
SCHEMA_WORDS = frozenset(
    [
        "name",
        "description",
        "schema",
        "input",
        "output",
        "type",
        "properties",
        "required",
        "title",
        "id",
        "tool",
        "server",
        "meta",
        "data",
        "content",
        "text",
        "value",
        "field",
        "column",
        "table",
        "index",
        "key",
        "primary",
    ]
)
SEMANTIC_RATIO = 0.5
DISTANCE_THRESHOLD = 1.0

KeywordMode = Literal["issue", "source"]


def go_round(value: float) -> int:
    """Go's math.Round: half away from zero (Python's round() rounds half to even: round(2.5) == 2)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def slot_split(total: int, semantic_ratio: float = SEMANTIC_RATIO) -> tuple[int, int]:
    """(keyword slots, semantic slots) for a result list of `total` tools."""
    semantic = go_round(total * semantic_ratio)
    return total - semantic, semantic


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def keyword_expression(query: str, mode: KeywordMode = "issue") -> str:
    """The FTS5 MATCH expression for a query; "" when nothing is left to match."""
    words = query.strip().split()
    if not words:
        return ""
    if mode == "source":
        if len(words) == 1 or any(word.lower() in SCHEMA_WORDS for word in words):
            return _quote(" ".join(words))
        return " OR ".join(_quote(word) for word in words)
    kept = [word for word in words if word.lower() not in SCHEMA_WORDS]
    return " OR ".join(_quote(word) for word in kept)


def merge(semantic: Sequence[int], keyword: Sequence[int], total: int) -> list[int]:
    """Semantic results first, then keyword results not already present; at most `total`."""
    seen: set[int] = set()
    merged: list[int] = []
    for row in (*semantic, *keyword):
        if row not in seen:
            seen.add(row)
            merged.append(row)
    return merged[:total]


def embedding_text(name: str, description: str) -> str:
    return f"name: {name} description: {description}"


class ToolHiveRanker:
    """The FTS5 table and the tool embeddings of one catalogue; `search` returns row numbers."""

    def __init__(
        self,
        names: Sequence[str],
        descriptions: Sequence[str],
        embeddings: npt.NDArray[np.float32],
        mode: KeywordMode = "issue",
    ) -> None:
        self.mode = mode
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute("CREATE VIRTUAL TABLE tools_fts USING fts5(name, description, tokenize='porter')")
        self.db.executemany(
            "INSERT INTO tools_fts(rowid, name, description) VALUES (?, ?, ?)",
            [(row, name, description) for row, (name, description) in enumerate(zip(names, descriptions, strict=True))],
        )
        self.db.commit()

    def keyword(self, query: str, limit: int) -> list[int]:
        expression = keyword_expression(query, self.mode)
        if not expression or limit <= 0:
            return []
        rows = self.db.execute(
            "SELECT rowid FROM tools_fts WHERE tools_fts MATCH ? ORDER BY rank LIMIT ?", (expression, limit)
        ).fetchall()
        return [int(row[0]) for row in rows]

    def semantic(self, query_vector: npt.NDArray[np.float32], limit: int) -> list[int]:
        if limit <= 0:
            return []
        # Cosine over normalised vectors; ToolHive normalises in its CosineDistance, ours are unit length.
        distance = 1.0 - self.embeddings @ query_vector.astype(np.float32)
        keep = np.flatnonzero(distance <= DISTANCE_THRESHOLD)
        order = keep[np.argsort(distance[keep], kind="stable")]
        return [int(row) for row in order[:limit]]

    def search(self, query: str, query_vector: npt.NDArray[np.float32], total: int) -> list[int]:
        keyword_slots, semantic_slots = slot_split(total)
        return merge(self.semantic(query_vector, semantic_slots), self.keyword(query, keyword_slots), total)
