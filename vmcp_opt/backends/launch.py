"""How a stdio backend is launched: its command, args, environment and working directory as resolved on this
machine. Apart from the transports (backends/transports.py) so that `vmcp validate` finds what `serve` would run
without importing the MCP SDK (~0.4 s); the transport hands this to the SDK's `StdioServerParameters`."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from vmcp_opt.config import BackendConfig


@dataclass(frozen=True)
class StdioLaunch:
    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str


def stdio_launch(backend: BackendConfig, base_dir: Path, secret_env: dict[str, str] | None = None) -> StdioLaunch:
    """Resolve command and cwd against the config file's directory; put our interpreter's bin first on PATH.

    A config that says `command: python` then runs the interpreter the gateway itself runs on, with the
    demo backends installed beside it, whether or not the virtualenv is activated. `~` and `~user` expand as
    in `data_dir` (no shell does it: the process is started without one).
    """
    assert backend.command is not None
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, backend.env.get("PATH", os.environ.get("PATH", ""))])
    command = os.path.expanduser(backend.command)  # a `~` it cannot expand (no such user, no home) stays as written
    if ("/" in command or command.startswith(".")) and not Path(command).is_absolute():
        command = str((base_dir / command).resolve())
    else:
        command = shutil.which(command, path=path) or command
    # Backends run in the config file's directory unless told otherwise, so relative args resolve there too.
    cwd = str((base_dir / os.path.expanduser(backend.cwd or ".")).resolve())
    return StdioLaunch(
        command=command, args=list(backend.args), env={**backend.env, **(secret_env or {}), "PATH": path}, cwd=cwd
    )
