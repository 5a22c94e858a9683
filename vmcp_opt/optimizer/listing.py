"""The catalogue as last listed, saved beside the index, so `vmcp index stats|search` need not start backends.

The gateway writes `<index directory>/catalogue.json` whenever find_tool's tools change, and so does
`vmcp index` when it asks the backends (`build`, `--refresh`; probe.py lists the same tools, the
configured workflows included): the tool records, what their `tools/list` costs (`tokens.tools_list_tokens`,
the one definition the server logs and find_tool reports), who listed them and for which configuration
(`catalogue_key`). Both save only a listing taken while every configured backend was connected (one serving no
tools counts: it has none to miss): taken while one was down, or before it came up, it lacks that backend's tools,
and saved it would stand for the whole catalogue in every later `stats` and `search`; the previous file is kept.
A missing, unreadable or other-model file is as good as none: the CLI then asks the backends.
So is one listed for another configuration: two configs sharing an index_dir each overwrite the file, and a
backend renamed or removed since (while a gateway ran with the optimizer off, which saves no catalogue)
would otherwise have `vmcp index search` rank tools this config does not serve.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.file_lock import remove_dead_writes, write_atomically

logger = logging.getLogger(__name__)

LISTING_FILE = "catalogue.json"
# The directories whose leftover temporary files this process removed (`_remove_dead_saves`): once each.
_swept: set[Path] = set()
# Per directory, the backends the last "not updated" line named (`save_complete_listing`): said once per set.
_unsaved_for: dict[Path, frozenset[str]] = {}


@dataclass(frozen=True)
class Listing:
    records: list[ToolRecord]
    # Tokens of these tools' `tools/list` answer (full MCP tool JSON), with `model`'s tokenizer.
    tools_list_tokens: int
    model: str
    # When it was saved (seconds since the epoch); None for a listing just taken from the backends.
    saved_at: float | None = None
    # Who took it from the backends, as the CLI's note names it.
    listed_by: str = "the gateway"
    # `catalogue_key` of the configuration it was listed for; None: not known (a file from before it was kept).
    config_key: str | None = None
    # The configured backends that were not connected when it was taken, whose tools it lacks (never saved: a
    # saved listing has none).
    not_connected: tuple[str, ...] = ()


def catalogue_key(config: VmcpConfig) -> str:
    """A digest of which tools `config` can serve, by name: its backends' names and tool filters, the naming of
    tools, its workflows (never a secret). How a backend is reached is left out: a catalogue saved before its
    command or URL changed (or stopped working) still names its tools. So are the optimizer's settings: they
    change the ranking, not the tools."""
    aggregation = config.aggregation
    filters = {name: rule.model_dump(mode="json") for name, rule in aggregation.tools.items()}
    shape = {
        "backends": {backend.name: filters.get(backend.name) for backend in config.backends},
        "naming": [aggregation.conflict_resolution, aggregation.prefix_format, aggregation.priority],
        "workflows": [workflow.model_dump(mode="json") for workflow in config.workflows],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_listing(directory: Path, listing: Listing) -> None:
    """Write atomically (a reader never sees half a file); a failure is a warning, the gateway keeps serving."""
    path = directory / LISTING_FILE
    data: dict[str, Any] = {
        "model": listing.model,
        "tools_list_tokens": listing.tools_list_tokens,
        "saved_at": time.time(),
        "listed_by": listing.listed_by,
        "config_key": listing.config_key,
        "tools": [{**asdict(record), "input_schema": dict(record.input_schema)} for record in listing.records],
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_dead_saves(path)
        _write_json_atomically(path, data)
    except OSError as exc:
        logger.warning("optimizer: could not save the catalogue to %s: %s", path, exc)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """`json.dumps(data, separators=(",", ":"), ensure_ascii=False)` to `path`, encoded a piece at a time: one
    `json.dumps` over 50,000 tools is one C call that holds the GIL for half a second, the event loop's thread
    waiting all along; the encoder's pieces return to Python between them, so the loop gets its turns."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    write_atomically(path, encoder.iterencode(data))


def save_complete_listing(directory: Path, listing: Listing) -> None:
    """The gateway's save: `listing`, unless a backend was not connected when it was taken (then the previous file
    is kept, and said so at info once per set of such backends: every start passes through it while its backends
    come up)."""
    missing = frozenset(listing.not_connected)
    if not missing:
        _unsaved_for.pop(directory, None)
        save_listing(directory, listing)
        return
    if _unsaved_for.get(directory) != missing:
        _unsaved_for[directory] = missing
        logger.info(
            "optimizer: %s not updated for `vmcp index`: backend(s) %s not connected; it is saved once every "
            "backend has listed its tools",
            directory / LISTING_FILE,
            ", ".join(sorted(missing)),
        )


def _remove_dead_saves(path: Path) -> None:
    """The temporary files of earlier saves whose writer died mid-write (a catalogue of 10k tools is ~10 MB each),
    at this process's first save to the directory. No lock: writers take none, and only a file whose writer is
    gone from this host, or older than any write takes, is removed (`remove_dead_writers`), never one being
    written."""
    if path.parent in _swept:
        return
    _swept.add(path.parent)
    for tmp in remove_dead_writes(path):
        logger.info("optimizer: removed %s, left by a catalogue save that did not finish", tmp)


def load_listing(directory: Path, model: str, config_key: str | None = None) -> Listing | None:
    """The saved listing, or None when there is none usable for `model` and, when given, the configuration whose
    `catalogue_key` is `config_key` (a file of another shape too: it is read by hand-run commands, which must
    say so and ask the backends, not end in a traceback). A file that names no configuration is taken."""
    path = directory / LISTING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("model") != model:
            return None
        saved_key = data.get("config_key")
        if config_key is not None and saved_key is not None and saved_key != config_key:
            logger.warning(
                "saved catalogue %s was listed for another configuration (another config sharing this index "
                "directory, or backends, tool filters or workflows changed since); asking the backends",
                path,
            )
            return None
        records = _records(data["tools"])
        listed_by = str(data.get("listed_by") or Listing.listed_by)  # a file from before it was kept
        saved_at = float(data["saved_at"])
        time.localtime(saved_at)  # the CLI shows it: NaN or a year past time_t is no save time
        key = saved_key if isinstance(saved_key, str) else None
        return Listing(records, int(data["tools_list_tokens"]), model, saved_at, listed_by, key)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
        logger.warning("saved catalogue %s not read (%s); asking the backends", path, exc)
        return None


# A saved record's fields as `save_listing` writes them, and their JSON types; only `name` and `backend` are
# required (a file from before a field was kept lacks it), and null is allowed where the record allows None.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "backend": (str,),
    "description": (str,),
    "input_schema": (dict,),
    "title": (str, type(None)),
    "backend_description": (str,),
    "original_name": (str, type(None)),
}


def _records(tools: Any) -> list[ToolRecord]:
    """The saved tools as records; a `ValueError` naming the first that is not one (the index and the ranking
    take a record's types for granted: a schema that is a string failed deep inside the search)."""
    if not isinstance(tools, list):
        raise ValueError(f"'tools' must be a list, got {type(tools).__name__}")
    records = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ValueError(f"tools[{i}] must be an object, got {type(tool).__name__}")
        missing = [key for key in ("name", "backend") if key not in tool]
        wrong = [key for key, kinds in _FIELD_TYPES.items() if key in tool and not isinstance(tool[key], kinds)]
        if missing or wrong:
            raise ValueError(f"tools[{i}]: {', '.join(missing + wrong)} missing or of the wrong type")
        records.append(ToolRecord(**tool))  # an unknown key is a TypeError
    return records
