"""How long /healthz waits while a gateway takes big POST bodies: N concurrent 3.9 MB tools/calls (an array of
1.95 M numbers, the costliest JSON per byte to parse), once answered and once refused by the rate limits (429).

    .venv/bin/python bench/big_bodies.py [--posts 6] [--code DIR]

`--code DIR`: run the gateway from another copy of the tree (a directory holding `vmcp_opt/`), e.g. one without a
change, for before/after figures. Prints /healthz p50 and max over the posts, and the posts' statuses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import demo_backend, raw_session, running_gateway, write_config  # noqa: E402

PAD = "[" + ",".join(["0"] * 1_950_000) + "]"
# The caller's one token goes to a small call first: every big post after it is refused.
REFUSING = {"rate_limits": {"per_caller": {"rate": 0.001, "burst": 1}}}


def big_call(request_id: int) -> bytes:
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"tools/call","params":{{"name":"notes_slow_echo",'
        f'"arguments":{{"message":"A","seconds":0,"pad":{PAD}}}}}}}'
    ).encode()


def health_during(base: str, url: str, headers: dict[str, str], posts: int) -> tuple[list[float], Counter[int]]:
    """/healthz answer times (ms), polled back to back while `posts` big calls run at once."""
    bodies = [big_call(100 + i) for i in range(posts)]
    statuses: Counter[int] = Counter()
    times: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx2.Client(timeout=120) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{base}/healthz")
                times.append((time.perf_counter() - started) * 1000)

    def post(body: bytes) -> None:
        statuses[httpx2.post(url, content=body, headers=headers, timeout=300).status_code] += 1

    poller = threading.Thread(target=poll)
    poller.start()
    senders = [threading.Thread(target=post, args=(body,)) for body in bodies]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    poller.join()
    return times, statuses


def run(directory: Path, config: dict[str, Any], code: Path | None, posts: int, refused: bool) -> str:
    path = write_config(directory, {"backends": [demo_backend("notes")], **config})
    with running_gateway(path, cwd=code) as gateway:
        headers = raw_session(gateway.url)
        if refused:
            small = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "notes_whoami"}}
            httpx2.post(gateway.url, json=small, headers=headers, timeout=30)
        times, statuses = health_during(gateway.base, gateway.url, headers, posts)
    return (
        f"/healthz p50 {statistics.median(times):7.0f} ms  max {max(times):7.0f} ms  ({len(times)} polls); "
        f"posts: {dict(statuses)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=6)
    parser.add_argument("--code", type=Path, default=None, help="a directory holding another copy of vmcp_opt/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, refused in (("answered", {}, False), ("refused 429", REFUSING, True)):
            directory = Path(tmp) / name.split()[0]
            directory.mkdir()
            print(f"{args.posts} x 3.9 MB, {name:12s}: {run(directory, config, args.code, args.posts, refused)}")


if __name__ == "__main__":
    main()
