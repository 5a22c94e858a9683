"""What a stdio backend leaves behind when it stops, found and ended: its process group, the descendants that left
the group, the orphans the gateway adopts, their zombies; and the launcher that takes a backend down with the gateway.

Why a module of its own: ending what outlives a backend is one concern with state of its own (`SPAWNS`: the
processes asyncio must reap, the marks, the zombies seen) that the transport's reader and writer never touch;
backends/stdio.py calls it when it spawns a backend (`adopt_orphans`, `killed_with_gateway`, `SPAWNS`) and when it
stops one (`outside_group`, `end_group`, `end_processes`, `end_left_behind`), and shares nothing else with it.

Unlike the SDK's `stdio_client`, a backend's process group is ended even when the backend exits by itself once
stdin closes (its children would be left running), and so are the descendants that left the group (`setsid`, a
daemon's double fork): on Linux the gateway is their subreaper (`become_subreaper`), so one orphaned is re-parented
here rather than to pid 1, and each backend's environment carries a mark of its own (`MARK_VARIABLE`) by which what
it left behind is found and ended when it stops (`end_left_behind`), and whatever is left at the gateway's exit. An
adopted orphan that exits while its backend runs is reaped by a sweep every `ZOMBIE_SWEEP_SECONDS` (a thread,
`stdio-zombie-sweep`), which leaves alone what asyncio is to reap. Where util-linux's `setpriv` can, a backend is
started under it with PR_SET_PDEATHSIG (SIGKILL): a gateway killed outright (OOM) takes its backends with it.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

if TYPE_CHECKING:  # imported where used: ~0.1 s a gateway does not spend before its first answer
    import psutil

logger = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL to its process group
REAP_SECONDS = 2.0  # for the event loop to see a killed process gone
GROUP_POLL_SECONDS = 0.02  # between looks at whether a backend's process group is gone
# In each backend's environment, "<gateway pid>.<serial>": inherited by its helpers, which it then names.
MARK_VARIABLE = "VMCP_STDIO_BACKEND"
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
PARENT_DEATH_SIGNAL = ("--pdeathsig", "KILL", "--")  # setpriv's options: SIGKILL the backend when the gateway dies


@dataclass
class Spawns:
    """This gateway's stdio backend processes not yet reaped, and the spawns under way. A worker thread reaping
    zombies must skip these: their status is asyncio's to read (a backend whose status was taken from it is
    reported as exit code 255, with a warning)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    live: set[int] = field(default_factory=set)
    starting: int = 0
    serials: itertools.count[int] = field(default_factory=itertools.count)
    subreaper: bool | None = None  # None: not yet asked for
    zombies: set[tuple[int, float]] = field(default_factory=set)  # (pid, start time) seen at the last sweep

    def mark(self) -> str:
        return f"{os.getpid()}.{next(self.serials)}"

    def begin(self) -> None:
        with self.lock:
            self.starting += 1

    def end(self, process: Process | None) -> None:
        """A spawn is over: `process` (None: it failed) is live until asyncio reaps it (`reaped`)."""
        with self.lock:
            self.starting -= 1
            if process is not None:
                self.live.add(process.pid)

    def reaped(self, process: Process) -> None:
        with self.lock:
            self.live.discard(process.pid)


SPAWNS = Spawns()


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux's PR_SET_CHILD_SUBREAPER): a backend's
    helper that left its group (`setsid`, a daemon's double fork) and lost its parent is re-parented here, where
    a backend's stop finds it, not to pid 1, where nothing does. False where it cannot be (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def adopt_orphans() -> None:
    """Once per process, before its first backend starts: become the subreaper, and end at exit what backends
    left behind (helpers adopted here would otherwise be re-parented to pid 1 when the gateway exits)."""
    if SPAWNS.subreaper is not None:
        return
    SPAWNS.subreaper = become_subreaper()
    atexit.register(_end_left_at_exit, os.getpid())
    if SPAWNS.subreaper:
        # An adopted orphan that exits while its backend runs is a zombie child of the gateway: reaped here, as
        # pid 1 (or the image's init) reaped it before, not left until its backend stops.
        threading.Thread(target=_sweep_zombies_forever, name="stdio-zombie-sweep", daemon=True).start()


# Seconds between sweeps for adopted zombies; one is reaped at its second sweep (`_reap_stale_zombies`).
ZOMBIE_SWEEP_SECONDS = 2.0


def _sweep_zombies_forever() -> None:
    while True:
        time.sleep(ZOMBIE_SWEEP_SECONDS)
        try:
            _reap_stale_zombies()
        except Exception:  # never let the sweep die: the next one tries again
            logger.debug("zombie sweep failed", exc_info=True)


@cache
def _setpriv() -> str | None:
    """util-linux's `setpriv`, where it can set PR_SET_PDEATHSIG (2.33+), else None. asyncio's spawn takes no
    `preexec_fn` to set it in the child ourselves; `setpriv` sets it and execs the backend (same pid, ~1 ms)."""
    if not sys.platform.startswith("linux") or (found := shutil.which("setpriv")) is None:
        return None
    try:
        tried = subprocess.run([found, *PARENT_DEATH_SIGNAL, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found if tried.returncode == 0 else None


def killed_with_gateway(command: list[str], env: dict[str, str], cwd: str | Path | None) -> list[str]:
    """`command` under `setpriv --pdeathsig KILL`: a backend that ignores its stdin's end is killed with the gateway
    even when the gateway is (an OOM kill), not left running. Only a command that will start there as it would
    alone: one that cannot (missing, not executable, no #! line) is started directly, to fail as it always did
    (`launch_failure` names the setting at fault; under setpriv it would be an exit 127)."""
    setpriv = _setpriv()
    if setpriv is None:
        return command
    program = command[0]
    if os.sep in program:
        path: str | None = os.path.join(cwd or os.curdir, program)
    else:
        path = shutil.which(program, path=env.get("PATH", os.defpath))
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        return command
    try:
        with open(path, "rb") as program_file:
            start = program_file.read(4)
    except OSError:
        return command
    if not start.startswith((b"#!", b"\x7fELF")):
        return command
    return [setpriv, *PARENT_DEATH_SIGNAL, *command]


async def end_group(process: Process) -> None:
    """SIGTERM the backend's process group, SIGKILL it if it is not gone after `KILL_GRACE_SECONDS` (as the SDK's
    `terminate_posix_process_tree`), reaping its members the gateway adopted as they go: a group is gone only once
    each member is reaped, and an orphan's reaper is the gateway now (`become_subreaper`), not pid 1."""
    pgid = process.pid  # the leader's pid (start_new_session); getpgid fails once the leader is reaped
    for sent, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, REAP_SECONDS)):
        try:
            os.killpg(pgid, sent)
        except ProcessLookupError:
            return  # the whole group is gone
        except PermissionError:  # never proof that the group is gone (zombies, another user's members): wait
            logger.debug("no permission to signal some of process group %d", pgid)
        with anyio.move_on_after(wait):
            while _group_alive(pgid):
                _reap_adopted_members(pgid)
                await anyio.sleep(GROUP_POLL_SECONDS)
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_adopted_members(pgid: int) -> None:
    """Reap the exited members of the backend's group that are the gateway's children: adopted orphans, all but
    the leader (the backend, whose status is asyncio's to read; a zombie leader is left for it)."""
    if not hasattr(os, "waitid"):  # pragma: no cover (no subreaper there either)
        return
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    with suppress(ChildProcessError):
        while (exited := os.waitid(os.P_PGID, pgid, flags)) is not None and exited.si_pid != pgid:
            os.waitpid(exited.si_pid, os.WNOHANG)


def group_may_be_ours(process: Process) -> bool:
    """Whether the process group named by the backend's pid can still be the backend's. Not reaped: yes. Reaped:
    only while no process has that pid, since the kernel gives no new process the id of a group that still has
    members; a process that has it now (a pid reused, as a group leader of its own, say) means ours is gone, and
    signalling the group by that id would reach an unrelated one."""
    if process.returncode is None:
        return True
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def outside_group(pid: int) -> list[psutil.Process]:
    """The descendants of `pid` outside its process group (started with `setsid`) that are still its descendants:
    found by parent links, so not one whose parent exited (a daemon's double fork), which is re-parented to the
    gateway (its subreaper) or to pid 1: `end_left_behind` finds the former by its mark."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    strays = []
    for child in children:
        with suppress(psutil.Error, OSError):
            if os.getpgid(child.pid) != pid:
                strays.append(child)
    return strays


def end_left_behind(mark: str, *, every: bool = False) -> None:
    """End the gateway's descendants that carry a stopped backend's `mark` in their environment (with `every`:
    any backend's of this gateway, at its exit), the backends still live excepted, then reap adopted zombies. A
    helper that cleared its environment is not found; nor one that ran as another user (unreadable)."""
    with SPAWNS.lock:
        live = set() if every else set(SPAWNS.live)
    left = [process for process in _descendants() if process.pid not in live and _marked(process, mark, every=every)]
    if left:
        logger.info("ending %d process(es) a stopped stdio backend left behind", len(left))
        end_processes(left)
    _reap_stale_zombies()


def _descendants() -> list[psutil.Process]:
    """The gateway's descendants: by the kernel's lists of each thread's children, which walk only its own tree
    (psutil's walk reads every process on the host, holding the GIL for each), or psutil's where there are none."""
    import psutil

    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        with suppress(psutil.Error):
            descendants: list[psutil.Process] = psutil.Process().children(recursive=True)
            return descendants
        return []
    found: list[psutil.Process] = []
    parents = [os.getpid()]
    while parents:
        children = [child for parent in parents for child in _children_of(parent)]
        for pid in children:
            with suppress(psutil.Error):
                found.append(psutil.Process(pid))
        parents = children
    return found


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    with suppress(OSError):  # gone since
        for thread in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError, ValueError), open(f"/proc/{pid}/task/{thread}/children", encoding="ascii") as listed:
                children += [int(child) for child in listed.read().split()]
    return children


def _marked(process: psutil.Process, mark: str, *, every: bool) -> bool:
    import psutil

    try:
        found: str = process.environ().get(MARK_VARIABLE, "")
    except (psutil.Error, OSError):  # gone, a zombie, or another user's
        return False
    return found.startswith(f"{os.getpid()}.") if every else found == mark


def _reap_stale_zombies() -> None:
    """Reap the gateway's zombie children that no one else will: adopted processes that exited by themselves. A
    zombie is reaped only when the previous sweep saw it too (whoever started a child of its own reaps it at
    once: asyncio, code mode's interpreters), never one in the gateway's session (the bulk embedding child,
    reaped by its `Popen` when polled), nor a backend not yet reaped by asyncio."""
    import psutil

    own_session = os.getsid(0)
    seen: set[tuple[int, float]] = set()
    for child in _children_zombies():
        with suppress(psutil.Error, OSError):
            key = (child.pid, child.create_time())
            if os.getsid(child.pid) == own_session:
                continue
            seen.add(key)
            with SPAWNS.lock:
                if key not in SPAWNS.zombies or child.pid in SPAWNS.live or SPAWNS.starting:
                    continue
                os.waitpid(child.pid, os.WNOHANG)
                seen.discard(key)
    with SPAWNS.lock:
        SPAWNS.zombies = seen


def _children_zombies() -> list[psutil.Process]:
    """The gateway's zombie children, by the kernel's lists of its threads' children where there are some (psutil's
    `children` reads every process on the host; this runs every `ZOMBIE_SWEEP_SECONDS`)."""
    import psutil

    pids: list[int] = []
    if os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        pids = _children_of(os.getpid())
    else:
        with suppress(psutil.Error):
            pids = [child.pid for child in psutil.Process().children()]
    zombies = []
    for pid in pids:
        with suppress(psutil.Error):
            child = psutil.Process(pid)
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
    return zombies


def _end_left_at_exit(gateway_pid: int) -> None:
    """At the gateway's exit: what any backend left behind, and backends still running (a stop cut short), which
    would be re-parented to pid 1. Not in a forked child, which inherits the handler."""
    if os.getpid() == gateway_pid:
        end_left_behind("", every=True)


def end_processes(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left after `KILL_GRACE_SECONDS`. psutil checks each is still the process
    it was (its start time), so a pid reused since is not signalled."""
    import psutil

    for process in processes:
        with suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=KILL_GRACE_SECONDS)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=REAP_SECONDS)
