"""The retrieval methods compared by `vmcp eval`, behind one small interface.

- `bm25`: bm25s (Lucene BM25, English stopwords, Snowball stemming) over each tool's plain document.
- `dense`: the configured embedding model, exact cosine over the same documents.
- `toolhive`, `toolhive-phrase`: ToolHive vMCP's optimizer ranking (see `eval/toolhive.py`).
- `optimizer`: our production ranking, `vmcp_opt.optimizer.index.ToolIndex.search`, with the configured
  defaults, including the co-usage graph learned from the dataset's usage history when it has one
  (`qrels/train.tsv`; `optimizer-cold` is the same without history). Ablation variants are `optimizer-<name>` (see `OPTIMIZER_VARIANTS`): the same code path with
  one `OptimizerConfig` field changed, or, for `optimizer-late-interaction`, with the re-ranking stage of
  `eval/late_interaction.py`, which is not part of the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from eval.datasets import Dataset, EvalTool
from eval.embed import SharedEmbedder
from eval.query_cap import QUERY_CAP, WHOLE_CAP, capped
from eval.query_template import API_TEMPLATE, QUERY_TEMPLATE, templated
from eval.toolhive import KeywordMode, ToolHiveRanker, embedding_text

if TYPE_CHECKING:
    from vmcp_opt.optimizer.documents import ToolRecord
    from vmcp_opt.optimizer.usage import UsageGraph

# Not an OptimizerConfig field: `{LATE_INTERACTION: weight}` hands `ToolIndex` eval/late_interaction.py's
# re-ranking stage, blended with the keyword arm at that weight (0.7 was the best on the dev split).
LATE_INTERACTION = "late_interaction"

# Ablations: each is the production default with these OptimizerConfig fields overridden.
OPTIMIZER_VARIANTS: dict[str, dict[str, Any]] = {
    # The optimizer on day one: no usage history to learn tools used together from.
    "optimizer-cold": {"usage": False},
    # Without raising the tools that issue a value a result requires (a token, an id).
    "optimizer-no-prerequisites": {"prerequisite_weight": 0.0},
    "optimizer-late-interaction": {LATE_INTERACTION: 0.7},
    # The fifth round's dev winner, not the default: the keyword arm's parameters twice and each arm scaled
    # by its best (it lost on four of the five held-out sets: eval/README.md).
    "optimizer-params-twice": {"parameter_weight": 2, "fusion_scaling": "max"},
    # The sixth round's dev winner, cold, not the default: the keyword arm's parameters weighed per catalogue
    # so they make 23.2 % of its tokens (where weight 2 puts ToolLens); it lost 2.4 on toolink (eval/README.md).
    "optimizer-cold-parameter-share": {"usage": False, "parameter_share": 0.232},
    # The seventh round's candidate, cold: the sixth's share rule with a head word that is one of its tool's
    # parameter names counted as a parameter word, and the weight capped at 2 (eval/README.md).
    "optimizer-cold-parameter-share-names": {
        "usage": False,
        "parameter_share": 0.232,
        "parameter_share_names": True,
        "parameter_share_cap": 2.0,
    },
    # Pseudo-relevance feedback, cold: the query vector moved 0.2 toward the mean of the first 5 fused results,
    # the vector arm searched again (optimizer/feedback.py); +0.2 on dev, measured for information only.
    "optimizer-cold-feedback": {"usage": False, "feedback_docs": 5, "feedback_dense": 0.2},
    # Each arm divided by its best score before fusion, instead of min-max.
    "optimizer-max-scaling": {"fusion_scaling": "max"},
    # Issue 19 goal 3, cold: the texts the vector arm embeds capped at N tokens (eval/query_cap.py); the
    # keyword arm reads the whole request. `-whole` caps a multi-intent request's own vector at 32 tokens.
    **{f"optimizer-cold-qcap{cap}": {"usage": False, QUERY_CAP: cap} for cap in (128, 96, 64, 48)},
    "optimizer-cold-qcap64-whole32": {"usage": False, QUERY_CAP: 64, WHOLE_CAP: 32},
    "optimizer-cold-qcap64-whole0": {"usage": False, QUERY_CAP: 64, WHOLE_CAP: 0},
    "optimizer-cold-whole0": {"usage": False, WHOLE_CAP: 0},
    # A multi-intent request's vector averaged from its intents' (`whole_request_vector`), not embedded.
    "optimizer-cold-intent-mean": {"usage": False, "whole_request_vector": "intent_mean"},
    # Fifteenth round, cold: every text the vector arm embeds read as "API to <text>" (eval/query_template.py).
    "optimizer-cold-api-template": {"usage": False, QUERY_TEMPLATE: API_TEMPLATE},
    "optimizer-no-split": {"split_intents": False},
    "optimizer-bm25-flat": {"bm25_k1": 0.9, "bm25_b": 0.3},
    "optimizer-rrf": {"fusion": "rrf"},
    "optimizer-dense-only": {"dense_weight": 1.0},
    "optimizer-keyword-only": {"dense_weight": 0.0},
}


# Methods that never embed a query: a run of only these has no query vectors to embed ahead of time.
QUERY_FREE_METHODS = frozenset({"bm25"})


@dataclass
class Context:
    """What every method of one dataset shares: the data, the model and a work directory."""

    dataset: Dataset
    embedder: SharedEmbedder
    work_dir: Path
    optimizer_overrides: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    name: str

    def build(self, ctx: Context) -> None: ...

    def search(self, query: str, depth: int) -> list[str]:
        """Tool ids, best first, at most `depth`."""
        ...

    def search_cutoffs(self, query: str, cutoffs: Sequence[int]) -> dict[int, list[str]] | None:
        """Rankings to score at each cut-off when a shorter list is not a prefix of a longer one."""
        ...

    def answer_tokens(self) -> list[int]:
        """Tokens of each result of the last search as find_tool's answer shows it (none for a method
        that is not find_tool)."""
        ...


def plain_text(tool: EvalTool) -> str:
    """The document the baselines index: the gateway's document for MCP rows, else the dataset's text."""
    if tool.mcp:
        from vmcp_opt.optimizer.documents import tool_document

        return tool_document(tool.fields.to_record())
    return tool.text


class BM25Method:
    name = "bm25"

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.retriever: Any = None
        self.stemmer: Any = None

    def build(self, ctx: Context) -> None:
        import bm25s
        import Stemmer

        self.ids = [tool.id for tool in ctx.dataset.tools]
        self.stemmer = Stemmer.Stemmer("english")
        corpus = [plain_text(tool) for tool in ctx.dataset.tools]
        tokens = bm25s.tokenize(corpus, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, depth: int) -> list[str]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False)
        if not tokens.vocab:
            return []
        depth = min(depth, len(self.ids))
        docs, scores = self.retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
        return [self.ids[int(doc)] for doc, score in zip(docs[0], scores[0], strict=True) if score > 0]

    def search_cutoffs(self, query: str, cutoffs: Sequence[int]) -> dict[int, list[str]] | None:
        return None

    def answer_tokens(self) -> list[int]:
        return []


class DenseMethod:
    name = "dense"

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.embedder: SharedEmbedder | None = None
        self.vectors = np.empty((0, 0), dtype=np.float32)

    def build(self, ctx: Context) -> None:
        self.ids = [tool.id for tool in ctx.dataset.tools]
        self.embedder = ctx.embedder
        self.vectors = ctx.embedder.encode_documents([plain_text(tool) for tool in ctx.dataset.tools])

    def search(self, query: str, depth: int) -> list[str]:
        assert self.embedder is not None
        scores = self.vectors @ self.embedder.encode_queries([query])[0]
        depth = min(depth, len(self.ids))
        top = np.argpartition(-scores, depth - 1)[:depth]
        return [self.ids[int(row)] for row in top[np.argsort(-scores[top], kind="stable")]]

    def search_cutoffs(self, query: str, cutoffs: Sequence[int]) -> dict[int, list[str]] | None:
        return None

    def answer_tokens(self) -> list[int]:
        return []


class ToolHiveMethod:
    def __init__(self, mode: KeywordMode = "issue") -> None:
        self.name = "toolhive" if mode == "issue" else "toolhive-phrase"
        self.mode: KeywordMode = mode
        self.ids: list[str] = []
        self.embedder: SharedEmbedder | None = None
        self.ranker: ToolHiveRanker | None = None
        # The vector of the query just searched: the untimed per-cut-off searches reuse it.
        self._last: tuple[str, Any] = ("", None)

    def build(self, ctx: Context) -> None:
        tools = ctx.dataset.tools
        self.ids = [tool.id for tool in tools]
        self.embedder = ctx.embedder
        names = [tool.fields.name for tool in tools]
        descriptions = [tool.fields.description for tool in tools]
        vectors = ctx.embedder.encode_documents(
            [embedding_text(n, d) for n, d in zip(names, descriptions, strict=True)]
        )
        self.ranker = ToolHiveRanker(names, descriptions, vectors, self.mode)

    def search(self, query: str, depth: int) -> list[str]:
        assert self.embedder is not None and self.ranker is not None
        vector = self.embedder.encode_queries([query])[0]
        self._last = (query, vector)
        return [self.ids[row] for row in self.ranker.search(query, vector, depth)]

    def search_cutoffs(self, query: str, cutoffs: Sequence[int]) -> dict[int, list[str]] | None:
        # ToolHive's list of size N splits its slots by N, so each cut-off is its own search (N = k).
        assert self.embedder is not None and self.ranker is not None
        last_query, vector = self._last
        if last_query != query:
            vector = self.embedder.encode_queries([query])[0]
        return {k: [self.ids[row] for row in self.ranker.search(query, vector, k)] for k in cutoffs}

    def answer_tokens(self) -> list[int]:
        return []


class OptimizerMethod:
    """The gateway's own index and ranking (`ToolIndex.search`), built from the tools' MCP fields."""

    def __init__(self, name: str = "optimizer", overrides: dict[str, Any] | None = None) -> None:
        self.name = name
        self.overrides = dict(overrides or {})
        self.index: Any = None
        self.id_by_name: dict[str, str] = {}
        self._last: Any = None

    def build(self, ctx: Context) -> None:
        from eval.late_interaction import LateInteraction
        from vmcp_opt.config import OptimizerConfig
        from vmcp_opt.optimizer.index import ToolIndex

        overrides = {**ctx.optimizer_overrides, **self.overrides}
        late_weight = overrides.pop(LATE_INTERACTION, None)
        cap, whole = overrides.pop(QUERY_CAP, None), overrides.pop(WHOLE_CAP, None)
        template = overrides.pop(QUERY_TEMPLATE, None)
        config = OptimizerConfig(**overrides)
        records = [tool.fields.to_record() for tool in ctx.dataset.tools]
        self.id_by_name = {record.name: tool.id for record, tool in zip(records, ctx.dataset.tools, strict=True)}
        # Per encoder: the index's own stamp covers the model's files, not how it is run, so one --out shared
        # by several encoders would otherwise hand each the first one's document vectors.
        index_dir = ctx.work_dir / "indexes" / ctx.embedder.encoder_name / ctx.dataset.name / self.name
        # SharedEmbedder has the Embedder interface (it delegates to one); typed apart to keep the cache.
        usage = past_usage(ctx.dataset, records) if config.usage else None
        reranker = LateInteraction(ctx.embedder, float(late_weight)) if late_weight is not None else None
        embedder = templated(capped(ctx.embedder, config, cap, whole), template)
        self.index = ToolIndex(config, index_dir, embedder=embedder, usage=usage, reranker=reranker)
        self.index.update(records)

    def search(self, query: str, depth: int) -> list[str]:
        result = self.index.search(query, limit=depth)
        self._last = result
        return [self.id_by_name[hit.record.name] for hit in result.hits]

    def search_cutoffs(self, query: str, cutoffs: Sequence[int]) -> dict[int, list[str]] | None:
        return None

    def answer_tokens(self) -> list[int]:
        """Per result of the last search, as find_tool shows its first `default_limit`, counted with the
        tokenizer find_tool's savings figure uses (`optimizer/tokens.py`)."""
        from vmcp_opt.optimizer.meta_tool_forms import hit_json
        from vmcp_opt.optimizer.tokens import answer_json, count_tokens

        hits = self._last.hits[: self.index.config.default_limit] if self._last is not None else []
        names = {hit.record.name for hit in hits}
        return [count_tokens(answer_json(hit_json(hit, names)), self.index.config.model) for hit in hits]


def past_usage(dataset: Dataset, records: Sequence[ToolRecord]) -> UsageGraph:
    """The co-usage graph a gateway would have learned from the dataset's past tasks (through the same
    `UsageGraph.record_task` the gateway's recorder feeds)."""
    from vmcp_opt.optimizer.usage import UsageGraph

    name_by_id = {tool.id: record.name for tool, record in zip(dataset.tools, records, strict=True)}
    graph = UsageGraph()
    for task in dataset.past_tasks():
        graph.record_task(name_by_id[tool] for tool in task if tool in name_by_id)
    return graph


# `optimizer-cold` is in the default run so the table always shows what the optimizer does without history.
BASE_METHODS = ("bm25", "dense", "toolhive", "optimizer", "optimizer-cold")
KNOWN_METHODS = (*BASE_METHODS, "toolhive-phrase", *(v for v in OPTIMIZER_VARIANTS if v not in BASE_METHODS))


def make_method(name: str) -> Method:
    if name == "bm25":
        return BM25Method()
    if name == "dense":
        return DenseMethod()
    if name == "toolhive":
        return ToolHiveMethod("issue")
    if name == "toolhive-phrase":
        return ToolHiveMethod("source")
    if name == "optimizer":
        return OptimizerMethod()
    if name in OPTIMIZER_VARIANTS:
        return OptimizerMethod(name, OPTIMIZER_VARIANTS[name])
    raise ValueError(f"unknown method {name!r}; known: {', '.join(KNOWN_METHODS)}")
