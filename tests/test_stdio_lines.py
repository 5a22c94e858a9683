"""How the stdio transport cuts a backend's output into lines (backends/stdio.py): any chunking, a cap, ids."""

from __future__ import annotations

import json
import random

import pytest

from vmcp_opt.backends.stdio import DroppedLine, LineAssembler, response_id


def fed(assembler: LineAssembler, data: bytes, sizes: list[int]) -> list[bytes | DroppedLine]:
    lines: list[bytes | DroppedLine] = []
    start = 0
    for size in sizes:
        lines += assembler.feed(data[start : start + size])
        start += size
    return lines + assembler.feed(data[start:])


@pytest.mark.parametrize("seed", range(5))
def test_lines_come_out_whole_however_the_bytes_are_chunked(seed: int) -> None:
    chooser = random.Random(seed)
    lines = [b"x" * chooser.randrange(0, 3000) for _ in range(50)]
    data = b"\n".join(lines) + b"\n"
    sizes = [chooser.randrange(1, 5000) for _ in range(len(data) // 1000)]
    assert fed(LineAssembler(cap=10_000), data, sizes) == lines


def test_a_line_past_the_cap_is_dropped_keeping_its_ends_and_the_next_line_is_whole() -> None:
    long_line = b"<" + b"y" * 100_000 + b">"
    lines = fed(LineAssembler(cap=5000), long_line + b"\nnext\n", [1000] * 150)
    assert lines[1] == b"next"
    dropped = lines[0]
    assert isinstance(dropped, DroppedLine) and dropped.size == len(long_line)
    assert dropped.head.startswith(b"<y") and dropped.tail.endswith(b"y>") and len(dropped.head) <= 4096


def dropped(message: bytes) -> DroppedLine:
    return DroppedLine(len(message), message[:4096], message[-4096:])


def test_the_id_of_a_dropped_response_is_found_first_or_last() -> None:
    result = {"content": [{"type": "text", "text": "z" * 20_000, "id": 99}]}
    sdk_order = json.dumps({"jsonrpc": "2.0", "id": 7, "result": result}).encode()
    typescript_order = json.dumps({"result": result, "jsonrpc": "2.0", "id": "req-8"}).encode()
    error = json.dumps({"jsonrpc": "2.0", "id": 9, "error": {"code": 1, "message": "m" * 20_000}}).encode()
    assert response_id(dropped(sdk_order)) == 7
    assert response_id(dropped(typescript_order + b"\r")) == "req-8"
    assert response_id(dropped(error)) == 9


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 3, "method": "sampling/createMessage", "params": {"x": "z" * 20_000}},
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "z" * 20_000, "id": 4}},
        {"jsonrpc": "2.0", "result": {"content": "z" * 20_000, "id": 5}, "id": 6, "pad": 1},
    ],
    ids=["a request to us", "a notification", "an id in the middle"],
)
def test_no_id_is_taken_from_what_is_not_plainly_a_response(message: dict[str, object]) -> None:
    assert response_id(dropped(json.dumps(message).encode())) is None
