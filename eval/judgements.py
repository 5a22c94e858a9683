"""What a dataset loader leaves out of the scores, each said as one line of `Dataset.notes`.

Leaving a judgement or a query out changes the figures, so a run says how many it left out rather than
nothing (eval/datasets.py's BEIR reader and eval/toolret.py's ToolRet reader both use these).
"""

from __future__ import annotations

from typing import Any

Qrels = dict[str, dict[str, int]]


def query_text(value: Any) -> str:
    """A query's text as read from a file: a missing or null text is blank, not the word "None"."""
    return "" if value is None else str(value)


def unmatched_judgements(qrels: Qrels, tools: set[str], queries: dict[str, str], where: str) -> list[str]:
    """Judgements the scores cannot use: a tool absent from the corpus can never be retrieved, and leaving it
    out raises Recall and COMP for that query, so the run says how many were left out rather than nothing."""
    missing_tools = sum(
        1 for qid, docs in qrels.items() if qid in queries for doc, rel in docs.items() if rel > 0 and doc not in tools
    )
    missing_queries = sum(1 for qid in qrels if qid not in queries)
    parts = []
    if missing_tools:
        parts.append(f"{missing_tools} judgements name a tool not in corpus.jsonl")
    if missing_queries:
        parts.append(f"{missing_queries} queries are not in queries.jsonl")
    return [f"{where}: {' and '.join(parts)}; left out of the scores"] if parts else []


def unknown_labels(labels: dict[str, dict[str, int]], tools: set[str], where: str) -> list[str]:
    """ToolRet labels (query id -> tool id -> relevance) naming a tool absent from tools.json, counted with
    the queries they leave with no relevant tool (which are then not scored at all)."""
    missing = sum(1 for docs in labels.values() for doc, rel in docs.items() if rel > 0 and doc not in tools)
    if not missing:
        return []
    emptied = sum(
        1
        for docs in labels.values()
        if any(rel > 0 for rel in docs.values()) and not any(rel > 0 and doc in tools for doc, rel in docs.items())
    )
    return [
        f"{where}: {missing} labels name a tool not in tools.json ({emptied} queries left with no relevant tool); "
        "left out of the scores"
    ]


def without_blank_queries(qrels: Qrels, queries: dict[str, str], where: str) -> tuple[Qrels, list[str]]:
    """`qrels` without its queries of blank text, and a note counting them: a query of no words gives a ranker
    nothing to rank by (the optimizer answers it with nothing, a dense ranker with noise), so scoring it
    measures the data, not the ranker."""
    blank = {qid for qid in qrels if qid in queries and not queries[qid].strip()}
    if not blank:
        return qrels, []
    kept = {qid: docs for qid, docs in qrels.items() if qid not in blank}
    return kept, [f"{where}: {len(blank)} judged queries have blank text; left out of the scores"]
