"""`vmcp serve` imports only what its config uses: a gateway sharing nothing through Redis, with no OAuth
and no Cedar policy (the bundled demo), never loads redis, pyjwt or cedarpy (about 12 MiB of its memory),
nor `vmcp eval`'s harness."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2

from tests.support import demo_backend, running_gateway, write_config

# Loaded only by the config sections that use them (vmcp_opt/shared/factories.py and the other factories),
# and `vmcp eval` only by its command line (cli.LazyGroup).
UNUSED_BY_THE_DEMO = ("redis", "jwt", "cedarpy", "eval")

# On the gateway's path only (it is first on `sys.path`): each Python process that imports the gateway writes
# the modules it had at exit to `<pid>.modules` beside this file.
SITECUSTOMIZE = """
import atexit, os, sys

def _modules():
    if "vmcp_opt.gateway" in sys.modules:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{os.getpid()}.modules")
        with open(out, "w", encoding="utf-8") as f:
            f.write("\\n".join(sorted(sys.modules)))

atexit.register(_modules)
"""


def test_a_gateway_that_uses_no_redis_oauth_or_policy_never_imports_them(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    # As the demo: the optimizer on (its usage history is the Redis one's factory), rate limits in memory.
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("demo")],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
            "rate_limits": {"per_caller": {"rate": 100, "burst": 100}},
        },
    )
    paths = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    with running_gateway(config, env={"PYTHONPATH": paths}) as gateway:
        assert httpx2.get(f"{gateway.base}/readyz", timeout=10).status_code in (200, 503)
    assert gateway.proc.returncode == 0, gateway.output()
    modules = set((hook / f"{gateway.proc.pid}.modules").read_text(encoding="utf-8").split())
    assert "vmcp_opt.server.http" in modules and "vmcp_opt.optimizer.metatools" in modules
    loaded = sorted(name for name in modules if name.split(".")[0] in UNUSED_BY_THE_DEMO)
    assert not loaded, loaded
    assert not any(name.startswith("vmcp_opt.shared.redis") for name in modules)
