"""Where a py-spy profile's samples went, by package: reads py-spy's raw (folded) output and prints each
package's share of the samples by the innermost frame ("self"), then the functions holding the most samples
inclusively (any frame of the stack), optionally only those whose file matches `--match`.

    .venv/bin/python bench/spy_shares.py PROFILE.txt [--top 40] [--match vmcp_opt/]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
PACKAGES = [
    ("vmcp_opt/", "vmcp-opt"),
    ("mcp/", "mcp SDK"),
    ("mcp_types/", "mcp SDK"),
    ("pydantic_core/", "pydantic"),
    ("pydantic/", "pydantic"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn"),
    ("h11/", "uvicorn"),
    ("httptools/", "uvicorn"),
    ("anyio/", "anyio"),
    ("sniffio/", "anyio"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("httpx2/", "httpx"),
    ("httpx/", "httpx"),
    ("httpcore", "httpx"),
    ("opentelemetry/", "opentelemetry"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("typing", "typing"),
]


OWNERS = {"vmcp-opt", "mcp SDK", "starlette", "uvicorn", "anyio", "asyncio", "httpx", "opentelemetry"}


def package(file: str) -> str:
    for marker, name in PACKAGES:
        if marker in file:
            return name
    return "other: " + file


def frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        match = FRAME.match(part)
        out.append((match["function"], match["file"]) if match else (part, ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="list only functions whose file contains this")
    parser.add_argument("--leaf", action="store_true", help="list functions by self samples, not inclusive")
    parser.add_argument(
        "--owner",
        action="store_true",
        help="by the innermost frame of an owning package (ours, the SDK, starlette, uvicorn, anyio, asyncio): "
        "a library they call (pydantic, json, logging, ...) counts for its caller; functions: our innermost frame",
    )
    args = parser.parse_args()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        stack_frames = frames(stack)
        function, file = stack_frames[-1]
        if args.owner:
            owner = next((o for o in map(package, (f for _, f in reversed(stack_frames))) if o in OWNERS), "other")
            by_package[owner] += count
            if owner == "vmcp-opt":
                ours = next((f"{n} ({p})" for n, p in reversed(stack_frames) if "vmcp_opt/" in p), "")
                inclusive[ours] += count
            continue
        by_package[package(file)] += count
        if args.leaf:
            if args.match in file:
                inclusive[f"{function} ({file})"] += count
            continue
        for name in {f"{f} ({p})" for f, p in stack_frames if args.match in p}:
            inclusive[name] += count
    print(f"{total} samples; by " + ("owning package:" if args.owner else "innermost frame's package:"))
    for name, count in by_package.most_common():
        print(f"  {count / total:6.1%}  {name}")
    print("functions, " + ("ours, with what they call" if args.owner else "self" if args.leaf else "inclusive") + ":")
    for name, count in inclusive.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
