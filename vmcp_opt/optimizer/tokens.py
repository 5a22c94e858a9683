"""Token counts with the embedding model's own tokenizer: what a tool list costs an agent, measured offline.

Loads only `tokenizer.json` through the `tokenizers` library (no torch, no transformers), once per model.
`tools_list_tokens` is the one definition of a tool list's cost: the server's log and find_tool's
`full_tool_list`, and `vmcp index stats`, all count the tools' JSON as `tools/list` puts it on the wire.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

import mcp_types as types

from vmcp_opt.optimizer.embedding import DEFAULT_MODEL, ModelError, resolve_model

_lock = threading.Lock()


@cache
def _tokenizer(model_spec: str) -> Any:
    from tokenizers import Tokenizer

    path = resolve_model(model_spec).path / "tokenizer.json"
    if not path.exists():
        raise ModelError(f"model {model_spec!r}: no tokenizer.json in {path.parent}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(text: str, model_spec: str = DEFAULT_MODEL) -> int:
    """Tokens in `text` (no special tokens, no truncation)."""
    if not text:
        return 0
    with _lock:
        tokenizer = _tokenizer(model_spec)
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def tool_json(tools: Sequence[types.Tool]) -> str:
    """The tools as `tools/list` puts them on the wire."""
    return json.dumps(
        [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools], separators=(",", ":")
    )


def tools_list_tokens(tools: Sequence[types.Tool], model_spec: str = DEFAULT_MODEL) -> int:
    """What an agent reads when a `tools/list` answer holds `tools`."""
    return count_tokens(tool_json(tools), model_spec)


def saving(full: int, optimized: int) -> str:
    """`optimized` against `full` in words: "(98.1% fewer)", or "(12.0% more)" for a catalogue smaller than
    the meta-tools."""
    if not full:
        return ""
    change = 100 * (optimized - full) / full
    return (
        f"({-change:.1f}% fewer)"
        if change <= 0
        else f"({change:.1f}% more: the catalogue is smaller than the meta-tools)"
    )
