"""What re-reading the API keys file costs, and whether the gateway keeps serving while it runs.

    .venv/bin/python bench/api_keys_reload.py [--keys 10000] [--skip-gateway]

1. In process, at `--keys` entries with every field: parsing the YAML with PyYAML's pure-Python loader (what
   the gateway used before), with libyaml's (what it uses now), the same entries as JSON, and checking the
   entries (`parse_entries`): where a re-read's time goes.
2. A `vmcp serve` with that YAML file: /healthz polled from another thread while the file is edited (a key
   added), then the latency of those polls, how long the request that noticed the edit waited for the re-read,
   and that the added key works after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import demo_backend, running_gateway, write_config  # noqa: E402
from vmcp_opt.auth.api_keys import new_key, parse_entries  # noqa: E402

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}},
}


def entries(count: int) -> list[dict[str, Any]]:
    return [
        {
            "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "subject": f"user{i}",
            "groups": ["dev", "ops"],
            "roles": ["r1"],
            "scopes": ["mcp"],
            "name": f"laptop{i}",
        }
        for i in range(count)
    ]


def keys_yaml(items: list[dict[str, Any]]) -> str:
    return "keys:\n" + "".join(f"  - {json.dumps(item)}\n" for item in items)  # flow mappings, as people write


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def parse_costs(count: int) -> None:
    items = entries(count)
    text, as_json = keys_yaml(items), json.dumps({"keys": items})
    print(f"{count} keys ({len(text) / 2**20:.1f} MiB of YAML)")
    print(f"  yaml.safe_load (pure Python, before) {timed(lambda: yaml.safe_load(text)):7.2f} s")
    print(f"  yaml CSafeLoader (libyaml, now)      {timed(lambda: yaml.load(text, Loader=yaml.CSafeLoader)):7.2f} s")
    print(f"  json.loads (a .json file)            {timed(lambda: json.loads(as_json)):7.2f} s")
    print(f"  parse_entries (checking the entries) {timed(lambda: parse_entries({'keys': items}, 'bench')):7.2f} s")


def post(url: str, key: str) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {key}"}
    return httpx2.post(url, json=INITIALIZE, headers=headers, timeout=120)


def gateway_stall(count: int) -> None:
    with TemporaryDirectory() as scratch:
        directory = Path(scratch)
        key, digest = new_key()
        added, added_digest = new_key()
        items = [{"sha256": digest, "subject": "alice"}, *entries(count)]
        keys = directory / "keys.yaml"
        keys.write_text(keys_yaml(items))
        auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.yaml"}}}
        config = write_config(directory, {"backends": [demo_backend("notes")], "auth": auth})
        with running_gateway(config) as gateway:
            assert post(gateway.url, key).status_code == 200
            latencies: list[float] = []
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    latencies.append(timed(lambda: httpx2.get(f"{gateway.base}/healthz", timeout=120)))
                    time.sleep(0.02)

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.5)
            keys.write_text(keys_yaml([*items, {"sha256": added_digest, "subject": "bob"}]))
            noticed = timed(lambda: post(gateway.url, key))
            works = post(gateway.url, added).status_code == 200
            time.sleep(0.5)
            stop.set()
            poller.join()
        print(f"gateway with {count + 1} keys, the file edited once (a key added):")
        print(f"  the request that noticed the edit answered after {noticed:.2f} s (it waits for the re-read)")
        median = statistics.median(latencies)
        print(f"  /healthz polls: {len(latencies)}, max {max(latencies):.3f} s, median {median:.3f} s")
        print(f"  the added key works after the re-read: {works}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000, help="entries in the keys file")
    parser.add_argument("--skip-gateway", action="store_true", help="only the in-process parse figures")
    args = parser.parse_args()
    parse_costs(args.keys)
    if not args.skip_gateway:
        gateway_stall(args.keys)


if __name__ == "__main__":
    main()
