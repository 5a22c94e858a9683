"""`vmcp serve` imports only what its config uses: a gateway sharing nothing through Redis, with no OAuth
and no Cedar policy (the bundled demo), never loads redis, pyjwt or cedarpy (about 12 MiB of its memory),
nor `vmcp eval`'s harness, nor the regular-expression engines while no schema has a pattern."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, sitecustomize, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1 asks the gateway for its modules"),
]

# Loaded only by the config sections that use them (vmcp_opt/shared/factories.py and the other factories),
# `vmcp eval` only by its command line (cli.LazyGroup), re2 and regex at the first pattern (arguments.py).
UNUSED_BY_THE_DEMO = ("redis", "jwt", "cedarpy", "eval", "re2", "regex")

# First on the gateway's `sys.path` only: on SIGUSR1 a process that imported the gateway writes the modules
# it holds to `<pid>.modules` beside this file.
SITECUSTOMIZE = """
import os, signal, sys

def _modules(signum, frame):
    if "vmcp_opt.gateway" in sys.modules:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{os.getpid()}.modules")
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            f.write("\\n".join(sorted(sys.modules)))
        os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, _modules)
"""


async def find_tool(url: str) -> None:
    with anyio.fail_after(60):
        async with Client(url) as client:
            await client.call_tool("find_tool", {"query": "echo a message"})


def test_a_gateway_that_uses_no_redis_oauth_or_policy_never_imports_them(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    env = sitecustomize(hook, SITECUSTOMIZE)
    # As the demo: the optimizer on (its usage history is the Redis one's factory), rate limits in memory.
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("demo")],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
            "rate_limits": {"per_caller": {"rate": 100, "burst": 100}},
        },
    )
    dump = hook / "unset"
    with running_gateway(config, env=env) as gateway:
        anyio.run(find_tool, gateway.url)  # through the request path, rate limit and optimizer included
        dump = hook / f"{gateway.proc.pid}.modules"
        gateway.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    modules = set(dump.read_text(encoding="utf-8").split())
    assert "vmcp_opt.server.http" in modules and "vmcp_opt.optimizer.metatools" in modules
    loaded = sorted(name for name in modules if name.split(".")[0] in UNUSED_BY_THE_DEMO)
    assert not loaded, loaded
    assert not any(name.startswith("vmcp_opt.shared.redis") for name in modules)


def test_the_keyword_arm_s_libraries_load_with_the_first_catalogue_not_at_start_up() -> None:
    # bm25s and scipy are ~0.2 s of imports that tools/list and initialize do not need (issue 19, goal 6).
    code = (
        "import sys, vmcp_opt.server.runner, vmcp_opt.optimizer.index; "
        "print(sorted(m for m in ('bm25s', 'scipy') if m in sys.modules)); "
        "from vmcp_opt.config import OptimizerConfig; from vmcp_opt.optimizer import keyword_arm; "
        "keyword_arm.build(['read a file'], OptimizerConfig()); print('bm25s' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "True"]
