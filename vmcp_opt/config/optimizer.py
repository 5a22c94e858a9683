"""The `optimizer:` section: find_tool's model, index, ranking and what it learns from use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vmcp_opt.config.base import _Strict

# The optimizer's own tools (optimizer/meta_tool_forms.py), listed whenever it is on.
_META_TOOLS = ("find_tool", "call_tool")


class FindToolSlotsConfig(_Strict):
    """find_tool's searches running at once (each in a worker thread: ~10-40 ms of CPU for a long query),
    for the whole gateway and for one caller (keyed as rate limits key callers: a verified subject, else the
    client's address, else its session). A search waits on the event loop for its slot, and a freed slot goes
    to the waiting caller that holds fewest, so one client sending many searches at once cannot keep another
    waiting behind them. Needs per_caller <= total."""

    # Searches at once for the whole gateway. Unset: one per CPU the process may use (at least per_caller): a
    # search is CPU work, so more at once only lengthens each, and the query encoder runs one per CPU anyway.
    total: int | None = Field(None, ge=1, le=256)
    # One caller's searches at once. Unset: the total, as every client on one address is one caller (every local
    # client, every client behind a proxy not in server.trusted_proxies): a cap of 1 would run their searches one
    # at a time. The fair hand-out alone keeps a flooding caller from holding others back: a freed slot goes to
    # a waiting caller holding fewer first.
    per_caller: int | None = Field(None, ge=1, le=256)
    # One caller's searches waiting for a slot; past it find_tool answers with an error naming this setting
    # (0: a search that cannot start at once is refused). As many as limits.max_connections_per_address by
    # default: clients sharing an address are one caller, and are refused here only where their connections
    # would be anyway.
    max_waiting_per_caller: int = Field(100, ge=0, le=1024)

    @model_validator(mode="after")
    def _nested_bounds(self) -> FindToolSlotsConfig:
        if self.total is not None and self.per_caller is not None and self.per_caller > self.total:
            default = "" if "per_caller" in self.model_fields_set else ", the default"
            raise ValueError(
                f"per_caller ({self.per_caller}{default}) is more than total ({self.total}); "
                "the bounds must be per_caller <= total"
            )
        return self


class OptimizerConfig(_Strict):
    # find_tool and call_tool in tools/list instead of every backend tool (`vmcp serve --no-optimizer`,
    # VMCP_OPTIMIZER__ENABLED=false or `enabled: false` lists every tool instead).
    enabled: bool = True
    # A registry id from models/registry.yaml or a local sentence-transformers directory.
    model: str = "all-MiniLM-L6-v2"
    # What runs the model: "onnx", ONNX Runtime over the model's ONNX export (made once by `vmcp models
    # export`, or at first start in a separate process; the gateway then never loads torch: ~230 MB less
    # memory, ~3 s faster start, same vectors), or "torch". BERT models with mean pooling only; others, or a
    # failed export, fall back to torch with a warning.
    encoder: Literal["onnx", "torch"] = "onnx"
    # The ONNX graph: "int8" (SmoothQuant, then int8 dynamic quantisation of the attention and first
    # feed-forward layers and int8 with one activation scale per token in the second: a query ~0.45x fp32's
    # CPU, nDCG@10 within 0.13 of fp32 on every eval set, eval/README.md), "int8-blockwise" (8-bit block-wise
    # MatMul weights: ~0.8x fp32's CPU) or "fp32". All share the persisted vectors.
    precision: Literal["fp32", "int8", "int8-blockwise"] = "int8"
    # Where ONNX exports are kept, one directory per model and content hash; relative paths resolve against
    # the config file's directory. Unset: `<data_dir>/models`.
    model_cache: str | None = None
    # Persisted index and usage history; relative paths resolve against the config file's directory.
    # Unset: `<data_dir>/indexes/<config file name>-<hash of its absolute path>`, one per config.
    index_dir: str | None = None
    # Tools always listed next to the meta-tools (routable names, each once; no patterns, not find_tool or
    # call_tool, which are always listed).
    pinned: list[str] = Field(default_factory=list)
    # Results find_tool returns when the request gives no `limit`.
    default_limit: int = Field(8, ge=1, le=50)
    # find_tool's searches at once, in total and per caller (each below).
    find_tool_slots: FindToolSlotsConfig = Field(default_factory=FindToolSlotsConfig)
    # Seconds find_tool waits for the vectors while the embedding model is still loading (the first seconds after
    # start, minutes when the model is first exported) before it ranks by keywords only: once, from the first call
    # that waits, shared by the calls after it; 0 answers at once.
    vector_wait: float = Field(10.0, ge=0, le=120)
    # Exact inner product by default; "hnsw" for very large catalogues.
    index_type: Literal["flat", "hnsw"] = "flat"
    # Exact search at 4,096 tools or more: int8 copies of the vectors pick the rows that are then scored in
    # float32, with an error bound that keeps the results exactly the float32 search's, reading a quarter of
    # the bytes (~2x faster vector arm at 100k tools; optimizer/int8_pass.py). False scans every vector.
    int8_first_pass: bool = True
    # Bulk encoding (the bulk child) on torch in bfloat16 where the CPU has AMX (~3x faster, same quality); false:
    # the child runs the serving ONNX graph everywhere.
    bulk_bfloat16: bool = True
    # Tools embedded per batch when indexing (a batch holds ~64x this many tokens, more short texts, fewer long
    # ones; 1: one tool a batch). Unset: the encoder's own, 64 on torch and 1 on ONNX Runtime (optimizer/batching.py
    # says why).
    batch_size: int | None = Field(None, ge=1)
    # With the onnx encoder, an update with this many new documents or more embeds them in a child process
    # (optimizer/bulk_embed.py): torch in bfloat16 where the CPU has AMX (~2x ONNX Runtime), else the serving
    # ONNX graph; the gateway itself stays torch-free and its memory after the build lower. 0 turns it off.
    bulk_process_min: int = Field(1000, ge=0)
    # Seconds that child may take before it is killed and the update embeds in process instead.
    bulk_process_timeout: float = Field(3600.0, gt=0)
    # Ranking: how the keyword and vector arms are fused. Defaults chosen by `vmcp eval` (eval/README.md).
    fusion: Literal["weighted", "rrf"] = "weighted"
    # Weighted fusion: the vector arm's share of the score (the keyword arm has the rest).
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    # Weighted fusion: how each arm's scores are put on 0..1 before they are added: "minmax" sends an arm's
    # worst candidate to 0, "max" divides by its best (+0.3 nDCG@10 on the ToolLens dev split, but part of a
    # change that lost on four of the five held-out sets: eval/README.md, fifth round).
    fusion_scaling: Literal["max", "minmax"] = "minmax"
    # Reciprocal-rank fusion's k: larger values flatten the head of each arm's ranking.
    rrf_k: int = Field(60, ge=1)
    # Split multi-intent requests into sub-queries and merge their rankings.
    split_intents: bool = True
    # Arm depth: candidates taken from each arm before fusion.
    candidates: int = Field(100, ge=1)
    # Tools used together (optimizer/usage.py): learned from the calls clients make through the gateway
    # (names and counts only), they raise each other in find_tool. On the ToolLens dev split, 13.9k past
    # tasks took nDCG@10 from 39.4 to 54.4 and COMP@5 from 10.9 to 29.4 (eval/README.md); with no history
    # the ranking is unchanged. Kept in `index_dir/usage.json` and, past 64 KiB, a journal of each sync's
    # changes beside it (`usage.json.journal`).
    usage: bool = True
    # Where that history is kept: `file` (`index_dir/usage.json`, merged under a lock by gateways sharing the
    # directory) or `redis` (the `redis` section: every replica adds its counts and reads the others').
    usage_store: Literal["file", "redis"] = "file"
    # Seconds between merges of the history with its store: a file is written when this gateway learned
    # something (and on shutdown), and re-read when it changed (another gateway's counts, or a `vmcp index
    # usage --clear`); Redis is also re-read, so replicas learn from each other this often.
    usage_sync_interval: float = Field(30.0, gt=0, le=3600)
    # How much the companions of the best results are raised; 0 turns it off in ranking.
    usage_weight: float = Field(1.0, ge=0.0)
    # The results whose companions and prerequisites are raised (the k-th result's weight is divided by k).
    usage_seeds: int = Field(8, ge=1, le=50)
    # Calls from one client this many seconds apart or less belong to one task.
    usage_window: float = Field(300.0, gt=0)
    # One caller teaches find_tool each tool, and each pair of tools used together, at most once per this many
    # seconds, so no caller's scripted tasks steer other callers' rankings; a gateway with one user may set minutes.
    usage_caller_period: float = Field(86_400.0, gt=0)
    # A tool issuing a value a result requires (GetUserToken for a `token`, list_channels for a `channel_id`;
    # optimizer/prerequisites.py) is raised as a companion with P = 1, times this; 0 turns it off.
    prerequisite_weight: float = Field(1.0, ge=0.0)
    # find_tool marks a result whose match score (0..1, optimizer/calibration.py) is below this as a weak match,
    # and says nothing fits when all are; unset: the threshold learned on the dev split for the model.
    match_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # Vectors of tools that left the catalogue, kept (in memory and in the persisted index, newest first) so
    # a backend that restarts or recovers is not embedded again: ~1.5 KB each.
    keep_removed: int = Field(10_000, ge=0)
    # Most sub-queries one multi-intent request is split into (each costs one query embedding).
    max_intents: int = Field(4, ge=1, le=16)
    # A multi-intent request's own vector: "embedded" (the request runs through the model beside its intents)
    # or "intent_mean" (its intents' vectors averaged, weighted by their words: one model input fewer, so a
    # long request's embedding costs about half at p95; -0.0 to -0.4 nDCG@10 on the held-out sets, see
    # eval/README.md, "Query length").
    whole_request_vector: Literal["embedded", "intent_mean"] = "embedded"
    # BM25 term saturation of the keyword arm (Lucene's default, like bm25_b's; lower values won on the
    # ToolLens dev split but lost on three held-out sets, see eval/README.md).
    bm25_k1: float = Field(1.5, gt=0)
    # BM25 length normalisation of the keyword arm (Lucene's default).
    bm25_b: float = Field(0.75, ge=0, le=1)
    # Times the keyword arm's document repeats each parameter line (name and full description): a field
    # weight for what a request passes. 1 (the vector arm's document) / 2 / 3: 40.9 / 41.7 / 42.2 nDCG@10 on
    # the ToolLens dev split, but 2 (with "max" scaling) lost 0.2-1.9 on each held-out ToolRet set
    # (eval/README.md, fifth round), so the default stays 1.
    parameter_weight: int = Field(1, ge=1, le=5)
    # When set, the keyword arm weighs parameters per catalogue instead (overriding `parameter_weight`):
    # their term counts are scaled, fractionally if need be (0.25 to 5), so that parameter words make this
    # share of the catalogue's keyword tokens. 0.232 (weight 2 on ToolLens) won +1.7 nDCG@10 on the dev
    # split and +1.7 / +0.5 on ToolLens test / apigen, but lost 2.4 on toolink (mean gain +5.0 as before:
    # eval/README.md, sixth round), so it is unset by default.
    parameter_share: float | None = Field(None, gt=0, lt=1)
    # With `parameter_share`: count the head's words that are its tool's parameter names (a description that
    # names its arguments, a docstring's `Args:` block) as parameter words, so a catalogue whose descriptions
    # already carry its parameters is not weighed up for them. With a cap of 2 it kept toolink unchanged and
    # raised the held-out mean gain to +5.2, but lost 0.8 on apibank (eval/README.md, seventh round).
    parameter_share_names: bool = False
    # With `parameter_share`: the most the parameters may weigh (at most 5).
    parameter_share_cap: float = Field(5.0, ge=1.0, le=5.0)
    # Pseudo-relevance feedback (optimizer/feedback.py): this many of each query's first fused results are
    # taken as relevant and both arms searched again with the query moved toward them; 0 turns it off. Within
    # +0.2 nDCG@10 on the ToolLens dev split and mean gain +5.0 on the held-out sets, as without it (~1 ms
    # more per search at 10k tools): off by default (eval/README.md, seventh round).
    feedback_docs: int = Field(0, ge=0, le=20)
    # Feedback's vector arm: Rocchio's weight of those results' mean vector added to the query's (0: not moved).
    feedback_dense: float = Field(0.0, ge=0.0, le=4.0)
    # Feedback's keyword arm: the tokens weighing most in those results added to the query (0: none) ...
    feedback_terms: int = Field(0, ge=0, le=50)
    # ... each at this weight times its weight relative to the heaviest (a query token counts 1).
    feedback_term_weight: float = Field(0.3, ge=0.0, le=4.0)
    # Recent query embeddings kept per index (find_tool queries repeat; an embedding is most of a search).
    query_cache_size: int = Field(1024, ge=0)
    # torch threads for one query embedding: 1 holds up when cores are contended (2 threads measured
    # 7x slower at p50 on a busy 2-core host), 2 saves ~2 ms on an idle one.
    query_threads: int = Field(1, ge=1, le=64)
    # torch threads for bulk embedding (index builds); 0 = every core.
    bulk_threads: int = Field(0, ge=0, le=256)

    @model_validator(mode="before")
    @classmethod
    def _rerank_removed(cls, data: Any) -> Any:
        # `rerank` and `rerank_weight` turned on late-interaction re-ranking, which lost on held-out data and
        # left the gateway for eval/late_interaction.py. A file that sets them to what the gateway does loads.
        if not isinstance(data, dict) or not {"rerank", "rerank_weight"} & data.keys():
            return data
        data = dict(data)
        rerank = data.pop("rerank", "none")
        data.pop("rerank_weight", None)
        if rerank != "none":
            raise ValueError(
                f"rerank: {rerank!r} is no longer available: late-interaction re-ranking lost on held-out data "
                "and left the gateway (eval/README.md; `vmcp eval run --methods optimizer-late-interaction` "
                "still measures it). Remove `rerank` and `rerank_weight`."
            )
        return data

    @field_validator("pinned")
    @classmethod
    def _pinned_names(cls, value: list[str]) -> list[str]:
        problems = []
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            problems.append(f"each tool once, repeated: {', '.join(repeated)}")
        patterns = [name for name in value if any(c in name for c in "*?[")]
        if patterns:
            problems.append(f"routable tool names, not patterns: {', '.join(patterns)}")
        meta = [name for name in value if name in _META_TOOLS]
        if meta:
            problems.append(f"{', '.join(meta)}: a meta-tool, always listed; leave it out")
        if problems:
            raise ValueError("; ".join(problems))
        return value
