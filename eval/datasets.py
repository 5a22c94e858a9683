"""Benchmark datasets: the bundled sets in `../shared/eval-data/` and any directory in the BEIR layout.

Every loader returns a `Dataset`: the tool catalogue, the queries and their relevance labels. Each tool
carries two views of itself:

- `text`, the document a plain retriever would index (BEIR: title and text; ToolRet: the JSON of its
  documentation, as in the reference numbers of the data's SOURCE.md). The `bm25` and `dense` baselines
  index this.
- `fields`, the MCP tool a gateway would receive if a backend served this tool (name, backend, description,
  input schema...). The optimizer builds its document from these exactly as it does for a live backend
  (`documents.tool_document`), and the ToolHive baseline reads `name` and `description` from them.

When a BEIR corpus row's `metadata` carries MCP fields (`name`, and optionally `backend`,
`backend_description`, `input_schema`, `description`, `title`), both views come from the gateway's
document; otherwise the fields are derived from `title` and `text`.

Its sections follow the formats: BEIR, and ToolLens (BEIR with fields of its own); the ToolRet reader is
eval/toolret.py, which `load_dataset` imports when a ToolRet task is asked for (it imports this module's types).
One module past 450 lines because every reader shares its checks (`first_use`, `scorable`, `unreadable`) and its
bounded reads (`bounded_lines`, `read_bounded`: no row past MAX_ROW_BYTES, no file past MAX_FILE_BYTES): split
apart, each format would import the others' helpers back.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from eval.judgements import query_text, unmatched_judgements, without_blank_queries

if TYPE_CHECKING:
    from vmcp_opt.optimizer.documents import ToolRecord

TOOLRET_TASKS = ("apigen", "apibank", "gorilla-huggingface", "toolink")
BUNDLED = ("toollens", *TOOLRET_TASKS)


class DatasetError(Exception):
    """A dataset that cannot be found or read; the message says what was expected."""


@dataclass(frozen=True)
class ToolFields:
    """The MCP view of one catalogue entry (mirrors `documents.ToolRecord`)."""

    name: str
    backend: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    backend_description: str = ""
    original_name: str | None = None

    def to_record(self) -> ToolRecord:
        from vmcp_opt.optimizer.documents import ToolRecord

        return ToolRecord(
            name=self.name,
            backend=self.backend,
            description=self.description,
            input_schema=self.input_schema,
            title=self.title,
            backend_description=self.backend_description,
            original_name=self.original_name,
        )


@dataclass(frozen=True)
class EvalTool:
    id: str
    text: str
    fields: ToolFields
    # True when the corpus row carried MCP metadata: the baselines then index the gateway's document too.
    mcp: bool = False


@dataclass
class Dataset:
    name: str
    tools: list[EvalTool]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    source: str = ""
    # Tools used together in past tasks (query id -> relevant tool ids of the training split): the history
    # a gateway would have learned from its own traffic, fed to the optimizer's co-usage graph.
    usage: dict[str, list[str]] = field(default_factory=dict)
    # What loading left out that changes the figures (judgements naming no known tool or query), one line each.
    notes: list[str] = field(default_factory=list)

    def past_tasks(self) -> list[list[str]]:
        """The usage history, never including a query that is scored (each would see its own answer)."""
        return [tools for qid, tools in self.usage.items() if qid not in self.qrels]

    def judged_queries(self) -> list[tuple[str, str]]:
        """(query id, text) of every query with at least one relevant tool, in a stable order."""
        return [(qid, self.queries[qid]) for qid in sorted(self.qrels, key=_natural) if qid in self.queries]

    def limited(self, limit: int | None, seed: int = 13) -> Dataset:
        """The same catalogue with at most `limit` judged queries, sampled reproducibly."""
        judged = [qid for qid, _ in self.judged_queries()]
        if limit is None or limit >= len(judged):
            return self
        keep = sorted(random.Random(seed).sample(judged, limit), key=_natural)
        return Dataset(
            name=self.name,
            tools=self.tools,
            queries={qid: self.queries[qid] for qid in keep},
            qrels={qid: self.qrels[qid] for qid in keep},
            split=self.split,
            source=self.source,
            usage=self.usage,
            notes=self.notes,
        )


def _natural(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def default_data_dir() -> Path:
    """`../shared/eval-data` next to the project root (override with `--data-dir` or `VMCP_EVAL_DATA`)."""
    import os

    from vmcp_opt.config import PROJECT_ROOT

    env = os.environ.get("VMCP_EVAL_DATA")
    return Path(env) if env else (PROJECT_ROOT.parent / "shared" / "eval-data").resolve()


def expand_names(names: Iterable[str]) -> list[str]:
    """`all` stands for every bundled set; other names and paths are kept in order, once."""
    out: list[str] = []
    for name in names:
        for item in BUNDLED if name == "all" else (name,):
            if item not in out:
                out.append(item)
    return out


def load_dataset(name_or_path: str, data_dir: Path | None = None, split: str = "test") -> Dataset:
    """A bundled set by name (`toollens`, `apigen`, ...) or a BEIR directory by path."""
    data_dir = data_dir or default_data_dir()
    if name_or_path == "toollens":
        root = data_dir / "toollens"
        _require(root / "corpus.jsonl", f"the ToolLens set (expected {root}/corpus.jsonl; see --data-dir)")
        dataset = load_beir(root, split=split, fields_from_row=toollens_fields, name="toollens")
        dataset.source = str(root)
        return dataset
    if name_or_path in TOOLRET_TASKS:
        if split != "test":
            raise DatasetError(f"{name_or_path}: ToolRet tasks have only one split (test), not {split!r}")
        root = data_dir / "toolret_subsets" / name_or_path
        for required in ("tools.json", "queries.json"):
            _require(root / required, f"the ToolRet task {name_or_path} (expected {root}/{required}; see --data-dir)")
        from eval.toolret import load_toolret  # here: eval/toolret.py imports this module's types

        return load_toolret(root, name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_beir(path, split=split)
    raise DatasetError(
        f"{name_or_path!r} is neither a bundled dataset ({', '.join(BUNDLED)}, or 'all') nor a BEIR directory"
    )


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"missing {what}")


# --- BEIR ---------------------------------------------------------------------------------------------


def load_beir(
    root: Path,
    split: str = "test",
    fields_from_row: Callable[[dict[str, Any]], ToolFields] | None = None,
    name: str | None = None,
) -> Dataset:
    """A BEIR directory: corpus.jsonl (_id, title, text, metadata), queries.jsonl, qrels/<split>.tsv.

    `qrels/train.tsv`, when present, is also the usage history: each training query's relevant tools are
    one past task (`Dataset.past_tasks` leaves out the queries being scored).
    """
    for required in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        _require(root / required, f"{required} in the BEIR directory {root}")
    tools: list[EvalTool] = []
    used_names: set[str] = set()
    id_lines: dict[str, str] = {}
    overlong: list[str] = []  # rows past MAX_ROW_BYTES, skipped: one note each
    for lineno, row in _read_jsonl(root / "corpus.jsonl", overlong):
        if "_id" not in row:
            raise DatasetError(f"{root}/corpus.jsonl:{lineno}: a corpus row needs `_id`")
        try:
            tool = _beir_tool(row, fields_from_row)
        except ValueError as exc:
            raise DatasetError(f"{root}/corpus.jsonl:{lineno}: {exc}") from None
        first_use(id_lines, tool.id, f"{root}/corpus.jsonl", f"line {lineno}")
        tools.append(unique_name(tool, used_names))
    queries: dict[str, str] = {}
    query_lines: dict[str, str] = {}
    for lineno, row in _read_jsonl(root / "queries.jsonl", overlong):
        if "_id" not in row:
            raise DatasetError(f"{root}/queries.jsonl:{lineno}: a query row needs `_id`")
        first_use(query_lines, str(row["_id"]), f"{root}/queries.jsonl", f"line {lineno}", what="query")
        queries[str(row["_id"])] = query_text(row.get("text"))
    qrels = read_qrels(root / "qrels" / f"{split}.tsv", overlong)
    known = {tool.id for tool in tools}
    notes = overlong + unmatched_judgements(qrels, known, queries, f"qrels/{split}.tsv")
    qrels = {
        qid: {doc: rel for doc, rel in docs.items() if doc in known and rel > 0}
        for qid, docs in qrels.items()
        if qid in queries
    }
    qrels, blank = without_blank_queries({qid: docs for qid, docs in qrels.items() if docs}, queries, "queries.jsonl")
    notes += blank + _wordless_rows(tools, root)
    train = root / "qrels" / "train.tsv"
    usage = {
        qid: [doc for doc, rel in docs.items() if doc in known and rel > 0]
        for qid, docs in (read_qrels(train, notes) if train.exists() else {}).items()
    }
    dataset = Dataset(
        name=name or root.name,
        tools=tools,
        queries=queries,
        qrels=qrels,
        split=split,
        source=str(root),
        usage={qid: tools for qid, tools in usage.items() if tools},
        notes=notes,
    )
    return scorable(dataset, f"{root}: corpus.jsonl", f"qrels/{split}.tsv (ids of queries.jsonl and corpus.jsonl)")


def _wordless_rows(tools: list[EvalTool], root: Path) -> list[str]:
    """A row of only an `_id` gives bm25 and dense an empty document: among others it is counted in a note,
    and a corpus of nothing else is refused here rather than as a numpy warning and a crash inside bm25."""
    wordless = sum(1 for tool in tools if not tool.mcp and not tool.text)
    if tools and wordless == len(tools):
        raise DatasetError(f"{root}/corpus.jsonl: no row has a title or text")
    if not wordless:
        return []
    rows = "1 row has" if wordless == 1 else f"{wordless} rows have"
    return [f"corpus.jsonl: {rows} no title or text (an empty document to bm25 and dense)"]


def first_use(seen: dict[str, str], item_id: str, file: str, place: str, what: str = "tool") -> None:
    """A tool id given twice would be ranked twice: a relevant tool then counts twice in DCG and nDCG passes
    1. A query id given twice would keep one text and drop the other unseen. Which copy the labels mean is
    unknowable, so the set is refused, not silently deduplicated."""
    if item_id in seen:
        raise DatasetError(
            f"{file} {place}: {what} id {item_id!r} is already the id of {seen[item_id]}; ids must be unique"
        )
    seen[item_id] = place


def scorable(dataset: Dataset, tools_file: str, judgements: str) -> Dataset:
    """A set with no tool or no judged query scores nothing: say why here, not as a crash of a metric."""
    if not dataset.tools:
        raise DatasetError(f"{tools_file} holds no tools")
    if not dataset.judged_queries():
        raise DatasetError(f"{dataset.source}: no query has a relevant tool in {judgements}")
    return dataset


# The longest row a dataset file may have. The bundled sets' longest is under 3 KB and the model reads 256 tokens
# of a document (about 1 KB of text): a row past 1 MiB is a broken or hostile file, and reading it whole would
# cost its size in memory. It is read past in blocks, never held, and skipped with a note naming file and line.
MAX_ROW_BYTES = 1 << 20
# The largest dataset file read, checked before reading (and while, for a file that grows or reports no size). A
# whole set is held in memory (its rows, their vectors; a ToolRet file is parsed whole, several times its size in
# Python objects), so a file past this is refused, not streamed. The largest bundled file is 3.3 MB.
MAX_FILE_BYTES = 128 << 20
# Blocks in which an overlong row is read past.
_SKIP_BLOCK = 1 << 16


def _read_jsonl(path: Path, notes: list[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    for lineno, line in bounded_lines(path, notes):
        if line.strip():
            yield lineno, _json_object(line, f"{path}:{lineno}")


def bounded_lines(path: Path, notes: list[str]) -> Iterator[tuple[int, str]]:
    """Each line of `path` (numbered from 1, its newline kept), read within MAX_ROW_BYTES and MAX_FILE_BYTES: a
    line past the first is given as "" (numbers stay those of the file) and named in `notes`."""
    lineno = 0
    try:
        with path.open("rb") as handle:
            _check_size(path, handle)
            total = 0
            while raw := handle.readline(MAX_ROW_BYTES + 1):
                lineno += 1
                total += len(raw)
                if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                    rest = _read_past_line(handle, path, total)
                    total += rest
                    notes.append(
                        f"{path}:{lineno}: a row of {_mib(len(raw) + rest)}, more than a row may hold "
                        f"({_mib(MAX_ROW_BYTES)}): skipped"
                    )
                    yield lineno, ""
                    continue
                _check_total(path, total)
                yield lineno, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}:{lineno}: not UTF-8 text") from None
    except OSError as exc:
        raise unreadable(path, exc) from None


def read_bounded(path: Path) -> bytes:
    """The whole of `path`, refused past MAX_FILE_BYTES before it is read (or once read past it)."""
    try:
        with path.open("rb") as handle:
            _check_size(path, handle)
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise unreadable(path, exc) from None
    _check_total(path, len(data))
    return data


def _check_size(path: Path, handle: BinaryIO) -> None:
    """Refuses, before a byte is read, a file the OS says is past MAX_FILE_BYTES."""
    size = os.fstat(handle.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise DatasetError(
            f"{path}: {_mib(size)}, more than a dataset file may hold ({_mib(MAX_FILE_BYTES)}): not read"
        )


def _check_total(path: Path, total: int) -> None:
    if total > MAX_FILE_BYTES:
        raise DatasetError(f"{path}: more than a dataset file may hold ({_mib(MAX_FILE_BYTES)}); stopped reading")


def _read_past_line(handle: BinaryIO, path: Path, total: int) -> int:
    """Bytes read past the rest of an overlong line, in blocks (none kept), within MAX_FILE_BYTES."""
    skipped = 0
    while block := handle.readline(_SKIP_BLOCK):
        skipped += len(block)
        _check_total(path, total + skipped)
        if block.endswith(b"\n"):
            break
    return skipped


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def unreadable(path: Path, exc: OSError) -> DatasetError:
    """A file the OS will not hand over (no permission, a directory where a file goes) is a bad dataset like
    any other: skipped with one line, not the end of a run whose other sets are fine."""
    return DatasetError(f"{path}: cannot read it: {exc.strerror or exc}")


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_qrels(path: Path, notes: list[str] | None = None) -> dict[str, dict[str, int]]:
    """`query-id corpus-id score` rows (tab-separated, first row a header).

    A file without the header (its first row already a judgement, score a number) is read whole: taking
    that row for a header would drop a judgement without a word. A row past MAX_ROW_BYTES comes from
    `bounded_lines` as a blank one: skipped, named in `notes`."""
    qrels: dict[str, dict[str, int]] = {}
    rows = csv.reader((line for _, line in bounded_lines(path, [] if notes is None else notes)), delimiter="\t")
    try:
        header = next(rows, None)
        if header is None or len(header) < 3:
            raise DatasetError(f"{path}: expected a header row `query-id<TAB>corpus-id<TAB>score`")
        first = [(1, header)] if _number(header[2]) is not None else []
        for lineno, row in itertools.chain(first, enumerate(rows, 2)):
            if row:
                qrels.setdefault(row[0], {})[row[1]] = _judgement(path, lineno, row)
    except csv.Error as exc:  # a field past csv's own limit (128 KiB), or a stray quote
        raise DatasetError(f"{path}:{rows.line_num}: {exc}") from None
    return qrels


def _judgement(path: Path, lineno: int, row: list[str]) -> int:
    if len(row) < 3:
        raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns, got {row!r}")
    score = _number(row[2])
    if score is None:
        raise DatasetError(f"{path}:{lineno}: the score {row[2]!r} is not a number")
    if not score.is_integer():  # int() would make 0.5 a 0: a judgement dropped without a word
        raise DatasetError(f"{path}:{lineno}: the score {row[2]!r} is not a whole number (0, 1, 2...)")
    return int(score)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _beir_tool(row: dict[str, Any], fields_from_row: Callable[[dict[str, Any]], ToolFields] | None) -> EvalTool:
    doc_id = str(row["_id"])
    title = str(row.get("title") or "")
    text = str(row.get("text") or "")
    metadata = row.get("metadata") or {}
    if isinstance(metadata, dict) and metadata.get("name"):
        if not isinstance(metadata.get("input_schema") or {}, dict):
            raise ValueError("`metadata.input_schema` must be a JSON object (a tool's input schema)")
        original_name = metadata.get("original_name")
        if original_name is not None and not isinstance(original_name, str):
            raise ValueError("`metadata.original_name` must be a string (the tool's name on its backend)")
        fields = ToolFields(
            name=str(metadata["name"]),
            backend=str(metadata.get("backend") or "default"),
            description=str(metadata.get("description") or text),
            input_schema=dict(metadata.get("input_schema") or {}),
            title=str(metadata.get("title") or title) or None,
            backend_description=str(metadata.get("backend_description") or ""),
            original_name=original_name,
        )
        return EvalTool(id=doc_id, text="", fields=fields, mcp=True)
    if fields_from_row is not None:
        fields = fields_from_row(row)
    else:
        fields = ToolFields(name=title or doc_id, backend="default", description=text)
    return EvalTool(id=doc_id, text=f"{title}\n{text}".strip(), fields=fields)


def unique_name(tool: EvalTool, used: set[str]) -> EvalTool:
    """The optimizer maps hits back by routable name, so names must be unique within a catalogue."""
    name = tool.fields.name
    suffix = 2
    while name in used:
        name = f"{tool.fields.name}_{suffix}"
        suffix += 1
    used.add(name)
    if name == tool.fields.name:
        return tool
    fields = ToolFields(**{**tool.fields.__dict__, "name": name})
    return EvalTool(id=tool.id, text=tool.text, fields=fields, mcp=tool.mcp)


# --- ToolLens -----------------------------------------------------------------------------------------

_TOOLLENS = re.compile(
    r"^category_name:(?P<category>.*?), tool_name:(?P<tool>.*?), api_name:(?P<api>.*?), "
    r"api_description:(?P<description>.*?), required_params: (?P<required>\[.*?\]), "
    r"optional_params: (?P<optional>\[.*?\]), return_schema: ",
    re.S,
)


def slug(text: str) -> str:
    """A routable identifier: lower-case words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "tool"


def toollens_fields(row: dict[str, Any]) -> ToolFields:
    """ToolLens rows flatten a RapidAPI endpoint into one string; split it into the MCP fields.

    A RapidAPI *tool* (e.g. "Worldwide Recipes") is a backend; its *API* (e.g. "Suggestions") is one MCP
    tool, exposed under the gateway's prefixed name `{backend}_{api}`. The return schema is not part of an
    MCP tool definition and is dropped.
    """
    text = str(row.get("text") or "")
    match = _TOOLLENS.match(text)
    if match is None:
        return ToolFields(name=slug(str(row.get("_id"))), backend="default", description=text)
    backend = slug(match["tool"])
    api = match["api"].strip()
    properties: dict[str, Any] = {}
    required: list[str] = []
    for group in ("required", "optional"):
        try:
            params = json.loads(match[group])
        except json.JSONDecodeError:
            params = []
        for param in params if isinstance(params, list) else []:
            if not isinstance(param, dict) or not param.get("name"):
                continue
            pname = str(param["name"])
            properties[pname] = {
                "type": json_type(str(param.get("type", "string"))),
                "description": str(param.get("description") or ""),
            }
            if group == "required":
                required.append(pname)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return ToolFields(
        name=f"{backend}_{slug(api)}",
        backend=backend,
        description=match["description"].strip(),
        input_schema=schema,
        backend_description=f"{match['tool'].strip()} ({match['category'].strip()})",
        original_name=api,
    )


def json_type(value: str) -> str:
    value = value.lower()
    if value in ("number", "float", "double"):
        return "number"
    if value in ("int", "integer"):
        return "integer"
    if value in ("bool", "boolean"):
        return "boolean"
    if value in ("array", "list"):
        return "array"
    if value in ("object", "dict"):
        return "object"
    return "string"
