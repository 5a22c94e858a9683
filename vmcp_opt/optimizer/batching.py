"""Token batches for bulk encoding, shared by the torch and ONNX encoders (no torch here).

Texts are tokenized in chunks into int32 arrays (a tokenizer `Encoding` per text, or a list of Python ints,
would hold gigabytes for 100k documents), then grouped longest first by token count, so a batch pads little:
about `batch_size` texts of 64 tokens each, more short ones, fewer long ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Texts per tokenizer call in bulk encoding.
TOKENIZE_CHUNK = 2048

# Bulk encoding's `batch_size` when the config leaves it unset, per encoder (bench/README.md, "Sixteenth
# session", and "Cold build: where the time went"). Torch's fused bfloat16 layers: 64 (~4,096 tokens a batch) was
# ~5% faster than 8,192 tokens, and 16k-32k were 37-62% slower (activations out of cache). ONNX Runtime's int8
# graph: one text a run, as a query runs. Its dynamic int8 takes one activation scale per run, so in a batch a
# document's vector moved with its batch-mates (a tool re-embedded alone differed from its cold-build vector),
# and 8 texts a batch, the fastest (1.32x the documents a second of 64 on 2 threads), lost 0.6 nDCG@10 points
# to fp32 on apibank; alone, each text is at most 0.38 from fp32 (eval/README.md) and still ~1.2x as fast as 64.
TORCH_BATCH_SIZE = 64
ONNX_BATCH_SIZE = 1


def load_tokenizer(file: Path, max_length: int) -> Any:
    """A `tokenizers.Tokenizer` from `tokenizer.json` set up as the lean encoder sets its copy (truncation at
    `max_length`, no padding), so ids from it are what `LeanEncoder.tokenize` gives."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def tokenize_chunked(tokenize: Callable[[Sequence[str]], list[list[int]]], texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids per text as int32 arrays, tokenized `TOKENIZE_CHUNK` texts at a time."""
    token_ids: list[np.ndarray] = []
    for first in range(0, len(texts), TOKENIZE_CHUNK):
        token_ids += [np.asarray(ids, dtype=np.int32) for ids in tokenize(texts[first : first + TOKENIZE_CHUNK])]
    return token_ids


def batches_by_tokens(token_ids: Sequence[np.ndarray], batch_size: int, multiple: int = 1) -> Iterator[np.ndarray]:
    """Row numbers of each batch: longest texts first, about `batch_size * 64` tokens per batch (at most
    `batch_size * 4` texts; 1: one text per batch). With `multiple` > 1 a batch's row count follows its longest text rounded up to
    `multiple` (as `padded` pads it), so every full batch of a length bucket has the same shape: oneDNN
    builds a kernel per bfloat16 shape, and irregular shapes cost time and memory."""
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    order = np.argsort(-lengths, kind="stable")
    budget = batch_size * 64
    start = 0
    while start < len(order):
        longest = -(-max(1, int(lengths[order[start]])) // multiple) * multiple
        count = 1 if batch_size == 1 else max(1, min(batch_size * 4, budget // longest))
        yield order[start : start + count]
        start += count


def padded(token_ids: Sequence[Sequence[int]], multiple: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """int64 ids (batch, longest rounded up to `multiple`) and, when there is padding, the attention mask
    (1 = token, 0 = padding)."""
    lengths = [len(ids) for ids in token_ids]
    longest = -(-max(lengths) // multiple) * multiple
    if min(lengths) == longest:
        return np.array(token_ids, dtype=np.int64), None
    ids = np.zeros((len(token_ids), longest), dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, (values, length) in enumerate(zip(token_ids, lengths, strict=True)):
        ids[row, :length] = values
        mask[row, :length] = 1
    return ids, mask


def low_padding_groups(lengths: Sequence[int], slack: float = 1.25) -> list[list[int]]:
    """Row numbers of the few texts of one request (a query and its intents) grouped so that no group pads
    to more than `slack` times its real tokens. A request pads its intents to the whole request's length in
    one batch, so its long tail paid up to 2.5x the tokens; groups of near-equal length cost about one run
    each instead (bench/find_tool.py: query embedding p95 0.7x, vectors unchanged)."""
    groups: list[list[int]] = []
    group: list[int] = []
    tokens = 0
    for row in sorted(range(len(lengths)), key=lambda row: lengths[row]):
        # Rows ascend, so this row's length is the group's padded width.
        if group and lengths[row] * (len(group) + 1) > slack * (tokens + lengths[row]):
            groups.append(group)
            group, tokens = [], 0
        group.append(row)
        tokens += lengths[row]
    if group:
        groups.append(group)
    return groups
