"""`vmcp serve` caps glibc's malloc arenas (server/malloc.py), unless MALLOC_ARENA_MAX says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CAP = "from vmcp_opt.server.malloc import cap_malloc_arenas; print(cap_malloc_arenas())"


def capped(env: dict[str, str]) -> str:
    """What `cap_malloc_arenas` answers in a fresh process (the cap is for the whole process)."""
    return subprocess.run(
        [sys.executable, "-c", CAP], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_arenas_are_capped_on_glibc_unless_the_environment_sets_them() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except ValueError:
        glibc = None
    assert capped(env) == str(bool(glibc))
    assert capped({**env, "MALLOC_ARENA_MAX": "4"}) == "False"  # glibc read the operator's choice at start
