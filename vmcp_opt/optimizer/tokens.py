"""Token counts with the embedding model's own tokenizer: what a tool list costs an agent, measured offline.

Loads only `tokenizer.json` through the `tokenizers` library (no torch, no transformers), once per model.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

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
