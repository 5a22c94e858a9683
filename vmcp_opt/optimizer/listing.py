"""The catalogue as last listed, saved beside the index, so `vmcp index stats|search` need not start backends.

The gateway writes `<index directory>/catalogue.json` whenever find_tool's tools change, and so does
`vmcp index` when it asks the backends (`build`, `--refresh`; probe.py lists the same tools, the
configured workflows included): the tool records, what their `tools/list` costs (`tokens.tools_list_tokens`,
the one definition the server logs and find_tool reports) and who listed them. A missing, unreadable or
other-model file is as good as none: the CLI then asks the backends.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.file_lock import write_atomically

logger = logging.getLogger(__name__)

LISTING_FILE = "catalogue.json"


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


def save_listing(directory: Path, listing: Listing) -> None:
    """Write atomically (a reader never sees half a file); a failure is a warning, the gateway keeps serving."""
    path = directory / LISTING_FILE
    data: dict[str, Any] = {
        "model": listing.model,
        "tools_list_tokens": listing.tools_list_tokens,
        "saved_at": time.time(),
        "listed_by": listing.listed_by,
        "tools": [{**asdict(record), "input_schema": dict(record.input_schema)} for record in listing.records],
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    except OSError as exc:
        logger.warning("optimizer: could not save the catalogue to %s: %s", path, exc)


def load_listing(directory: Path, model: str) -> Listing | None:
    """The saved listing, or None when there is none usable for `model`."""
    path = directory / LISTING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("model") != model:
            return None
        records = [ToolRecord(**tool) for tool in data["tools"]]
        listed_by = str(data.get("listed_by") or Listing.listed_by)  # a file from before it was kept
        return Listing(records, int(data["tools_list_tokens"]), model, float(data["saved_at"]), listed_by)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("saved catalogue %s not read (%s); asking the backends", path, exc)
        return None
