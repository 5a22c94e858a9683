"""find_tool through two gateways, this tree and the package at a git revision, interleaved, beside the same
search in this process: what the MCP round trip adds over `ToolIndex.search`, before and after a change.

    .venv/bin/python bench/find_tool_before_after.py --before REV --index-dir DIR [--tools 10000] [--queries 200]

DIR holds an index built for the same catalogue (the `idx` directory a `bench/find_tool_gateway.py` run or a
gateway on that catalogue left behind: the vectors are reused, nothing is embedded). Each gateway gets its
own copy. Both gateways run `bench/find_tool_gateway.py`'s config; every query goes to both (the order
alternating) and then to the in-process index. Prints p50/p95/mean per path and each gateway's CPU per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.abuse import gateway_at  # noqa: E402
from bench.find_tool_gateway import DATA, queries  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import Gateway, running_gateway, write_config  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(index_dir: Path, tools: int) -> dict[str, Any]:
    script = str(ROOT / "examples" / "backends" / "catalog_server.py")
    backend = {
        "name": "catalog",
        "command": sys.executable,
        "args": [script, "--tools", str(tools), "--data", str(DATA)],
    }
    return {
        "backends": [backend],
        "optimizer": {"enabled": True, "index_dir": str(index_dir)},
        "timeouts": {"connect": 120},
    }


def local_index(index_dir: Path, tools: int) -> Any:
    sys.argv = ["catalog"]
    from examples.backends.catalog_server import load_tools
    from vmcp_opt.config import OptimizerConfig
    from vmcp_opt.optimizer.documents import ToolRecord
    from vmcp_opt.optimizer.index import ToolIndex

    records = [
        ToolRecord(f"catalog_{t.name}", "catalog", t.description or "", t.input_schema, original_name=t.name)
        for t in load_tools(DATA, tools)
    ]
    index = ToolIndex(OptimizerConfig(), index_dir)
    index.update(records)
    return index


async def ready(client: Client, gateway: Gateway) -> None:
    """Vectors in and answer tokens counted."""
    with anyio.fail_after(900):
        while True:
            answer = (await client.call_tool("find_tool", {"query": "warm up"})).structured_content or {}
            if answer.get("ranking") == "hybrid" and "answer tokens counted" in gateway.output():
                break
            await anyio.sleep(0.5)


async def measure(gateways: dict[str, Gateway], index: Any, texts: list[str]) -> None:
    # Each gateway ready before any measuring client connects: a connection left idle past the keep-alive
    # timeout while the other gateway starts can be closed just as its next request is sent (the loop is busy
    # indexing then, so the timer fires late), which a POST cannot survive.
    for gateway in gateways.values():
        async with Client(gateway.url) as client:
            await ready(client, gateway)
    async with contextlib.AsyncExitStack() as stack:
        clients = {label: await stack.enter_async_context(Client(g.url)) for label, g in gateways.items()}
        for client in clients.values():
            for text in texts[:20]:
                await client.call_tool("find_tool", {"query": text, "limit": 8})
        samples: dict[str, list[float]] = {label: [] for label in [*clients, "in process"]}
        cpu = dict.fromkeys(clients, 0.0)
        for i, text in enumerate(texts):
            for label in list(clients)[:: 1 if i % 2 == 0 else -1]:
                pid, begun = gateways[label].proc.pid, time.perf_counter()
                before = cpu_seconds(pid)
                result = await clients[label].call_tool("find_tool", {"query": text, "limit": 8})
                samples[label].append((time.perf_counter() - begun) * 1000)
                cpu[label] += cpu_seconds(pid) - before
                assert not result.is_error
            begun = time.perf_counter()
            index.search(text, 8)
            samples["in process"].append((time.perf_counter() - begun) * 1000)
    for label, values in samples.items():
        spent = f"; gateway CPU {cpu[label] / len(values) * 1000:.2f} ms per call" if label in cpu else ""
        print(
            f"{label:>12}: p50 {percentile(values, 50):.2f} ms  p95 {percentile(values, 95):.2f} ms  "
            f"mean {statistics.mean(values):.2f} ms{spent}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REV", required=True)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--tools", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    texts = queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        directory = Path(scratch)
        copies = {name: directory / f"idx-{name}" for name in ("before", "after")}
        for copy in copies.values():
            shutil.copytree(args.index_dir, copy)
        before = stack.enter_context(
            gateway_at(args.before, directory / "before", config(copies["before"], args.tools))
        )
        after_dir = directory / "after"
        after_dir.mkdir()
        after = stack.enter_context(
            running_gateway(write_config(after_dir, config(copies["after"], args.tools)), wait_ready=False)
        )
        index = local_index(args.index_dir, args.tools)
        anyio.run(measure, {f"before {args.before}": before, "this tree": after}, index, texts)


if __name__ == "__main__":
    main()
