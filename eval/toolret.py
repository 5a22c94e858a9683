"""ToolRet tasks (`../shared/eval-data/toolret_subsets/<task>`): queries.json (id, query, labels) and tools.json
(id, documentation), read into eval/datasets.py's `Dataset`; `toolret_fields` makes each tool's documentation
the MCP tool a gateway would receive (name, backend, description, input schema) for its task's layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from eval.datasets import (
    Dataset,
    DatasetError,
    EvalTool,
    ToolFields,
    first_use,
    json_type,
    read_bounded,
    scorable,
    slug,
    unique_name,
)
from eval.judgements import query_text, unknown_labels, without_blank_queries


def load_toolret(root: Path, task: str) -> Dataset:
    """queries.json (id, query, labels) and tools.json (id, documentation) of one ToolRet task."""
    tools_raw, queries_raw = _json_file(root / "tools.json"), _json_file(root / "queries.json")
    try:
        dataset = _toolret_dataset(root, task, tools_raw, queries_raw)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # A file of the wrong shape (a missing key, an object where a list goes): one line, not a traceback.
        raise DatasetError(
            f"{root}: not the ToolRet layout (tools.json: [{{id, documentation}}], queries.json: "
            f"[{{id, query, labels}}]): {type(exc).__name__} {exc}"
        ) from None
    return scorable(dataset, f"{root}/tools.json", "the labels of queries.json")


def _json_file(path: Path) -> Any:
    """The file parsed whole (one JSON document has no rows to read apart), so its size is bounded first."""
    try:
        return json.loads(read_bounded(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from None


def _toolret_dataset(root: Path, task: str, tools_raw: Any, queries_raw: Any) -> Dataset:
    tools: list[EvalTool] = []
    used: set[str] = set()
    id_entries: dict[str, str] = {}
    for entry, item in enumerate(tools_raw, 1):
        doc = item["documentation"]
        first_use(id_entries, str(item["id"]), f"{root}/tools.json", f"entry {entry}")
        tool = EvalTool(
            id=str(item["id"]),
            text=json.dumps(doc, ensure_ascii=False),
            fields=toolret_fields(task, doc),
        )
        tools.append(unique_name(tool, used))
    known = {tool.id for tool in tools}
    query_entries: dict[str, str] = {}
    for entry, query in enumerate(queries_raw, 1):
        first_use(query_entries, str(query["id"]), f"{root}/queries.json", f"entry {entry}", what="query")
    queries = {str(q["id"]): query_text(q["query"]) for q in queries_raw}
    labels = {str(q["id"]): _labels(root, q) for q in queries_raw}
    notes = unknown_labels(labels, known, f"{root}/queries.json")
    qrels = {qid: {doc: rel for doc, rel in docs.items() if doc in known and rel > 0} for qid, docs in labels.items()}
    qrels, blank = without_blank_queries({qid: docs for qid, docs in qrels.items() if docs}, queries, "queries.json")
    return Dataset(name=task, tools=tools, queries=queries, qrels=qrels, source=str(root), notes=notes + blank)


def _labels(root: Path, query: dict[str, Any]) -> dict[str, int]:
    """One query's labels, tool id -> relevance (1 when not given); a fractional relevance is refused, as a
    BEIR qrels score is, rather than truncated to 0 and its label dropped."""
    labels: dict[str, int] = {}
    for label in query.get("labels", []):
        if "id" not in label:
            continue
        relevance = label.get("relevance", 1)
        if isinstance(relevance, bool) or not isinstance(relevance, int | float) or not float(relevance).is_integer():
            raise DatasetError(
                f"{root}/queries.json: query {query['id']!r}: the relevance {relevance!r} of label "
                f"{label['id']!r} is not a whole number (0, 1, 2...)"
            )
        labels[str(label["id"])] = int(relevance)
    return labels


def toolret_fields(task: str, doc: dict[str, Any]) -> ToolFields:
    """The MCP view of a ToolRet tool, per task (the documentation keys differ; see eval/README.md).

    - apigen: `name`, `description`, `parameters` {param: {description, type, default}} -> input schema.
    - apibank: `name`, `description` (quotes stripped), `parameters` [{name, description, schema}]; the
      `category` is Chinese and left out.
    - gorilla-huggingface: `name` (the model id), `description`; `functionality` (e.g. "Language
      Identification") is the tool's title and `domain` is its backend (one server per task domain).
      `api_call`, `example_code` and `performance` are code, not description, and are left out.
    - toolink: `name`, `description`; parameter names come from the `def` line of `func_description`.
    """
    name = str(doc.get("name") or "tool")
    description = str(doc.get("description") or "").strip()
    backend = slug(task)
    properties: dict[str, Any] = {}
    title: str | None = None
    backend_description = ""
    if task == "apigen" and isinstance(doc.get("parameters"), dict):
        for pname, spec in doc["parameters"].items():
            spec = spec if isinstance(spec, dict) else {}
            properties[str(pname)] = {
                "type": json_type(str(spec.get("type", "string")).split(",")[0].strip()),
                "description": str(spec.get("description") or ""),
            }
    elif task == "apibank":
        description = description.strip('"').strip()
        for param in doc.get("parameters") or []:
            if isinstance(param, dict) and param.get("name"):
                param_schema = param.get("schema")
                param_type = param_schema.get("type", "string") if isinstance(param_schema, dict) else "string"
                properties[str(param["name"])] = {
                    "type": json_type(str(param_type)),
                    "description": str(param.get("description") or ""),
                }
    elif task == "gorilla-huggingface":
        title = str(doc.get("functionality") or "") or None
        domain = str(doc.get("domain") or "")
        if domain:
            backend = slug(domain)
            backend_description = domain
    elif task == "toolink":
        signature = re.search(r"def\s+\w+\s*\(([^)]*)\)", str(doc.get("func_description") or ""))
        if signature:
            for part in signature.group(1).split(","):
                pname = part.split(":")[0].split("=")[0].strip().lstrip("*")
                if pname and pname != "self":
                    properties[pname] = {"type": "string"}
    schema: dict[str, Any] = {"type": "object", "properties": properties} if properties else {}
    return ToolFields(
        name=name,
        backend=backend,
        description=description,
        input_schema=schema,
        title=title,
        backend_description=backend_description,
    )
