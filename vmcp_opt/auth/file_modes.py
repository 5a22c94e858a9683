"""Who besides the gateway's own user could change a file that grants access: the API keys file (re-read while
serving, so an edit takes effect at once) and the Cedar policy file (read at start). In the spirit of sshd's
StrictModes, without breaking the usual deployments:

- refused (the loader fails closed, as for an unreadable file): the file writable by others (o+w), its directory
  writable by others without the sticky bit (anyone could replace the file), or the file owned by a user other than
  the gateway's or root in a directory others may write, sticky or not (anyone could have created it);
- warned about, still loaded: the file or its directory group-writable (a umask 002 user's 0664 file), or owned by
  a user other than the gateway's own or root (that user can chmod it).

Kubernetes secret and configmap volumes pass: root-owned 0644 files behind `..data` symlinks, in a mount
directory that is 1777 (sticky) at worst. Checked: the file as opened (its `fstat`, so the verdict is about the
bytes read), the directory holding its configured name and, when that name is a symlink, the directory holding
the file it resolves to. Not the parents further up to `/`: those belong to the host's administrator, and walking
them at every re-read costs a stat each for what a deployment's own directories already decide.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Owners trusted besides the gateway's own user: root can change any file anyway.
_ROOT = 0


@dataclass(frozen=True)
class Exposure:
    """What others could do to a file: `refusal` when any local user could change it, else None; `warnings` for a
    group or another user who could."""

    refusal: str | None = None
    warnings: tuple[str, ...] = ()


def directories(path: Path) -> tuple[Path, ...]:
    """The directory holding the configured name and, if it resolves elsewhere, the one holding the file."""
    named = path.absolute().parent
    resolved = Path(os.path.realpath(path)).parent
    return (named,) if resolved == named else (named, resolved)


def exposure(path: Path, opened: os.stat_result, grants: str, *, strict: bool = True) -> Exposure:
    """`opened` is the file's `fstat`; `grants` says what a writer could do ("add an API key with any groups or
    roles", after "could"), so the message says why it matters. Nothing on a system without POSIX owners. Not
    `strict` (`auth.strict_file_modes` off): a refusal is a warning, for file systems whose modes mean nothing."""
    if os.name != "posix":
        return Exposure()
    refusal = _file_refusal(path, opened, grants)
    warnings = _warnings(f"{path}", "change it", path, opened, grants, directory=False)
    for directory in directories(path):
        try:
            status = os.stat(directory)
        except OSError:
            continue  # the file was just opened through it: gone since, and the next stat sees a change
        refusal = refusal or _directory_refusal(path, directory, status, grants)
        refusal = refusal or _planted_refusal(path, opened, directory, status, grants)
        place = f"{path}: its directory {directory}"
        warnings += _warnings(place, "replace the file", directory, status, grants, directory=True)
    if refusal is not None and not strict:
        return Exposure(None, (f"{refusal}; loaded all the same: auth.strict_file_modes is off", *warnings))
    return Exposure(refusal, tuple(warnings))


def signature(directories: tuple[Path, ...]) -> tuple[int, ...]:
    """What tells a directory's mode or owner changed (a `chmod o-w` fixing it): its inode, mode and owner."""
    found: list[int] = []
    for directory in directories:
        try:
            status = os.stat(directory)
        except OSError:
            found += [-1, -1, -1]
        else:
            found += [status.st_ino, status.st_mode, status.st_uid]
    return tuple(found)


def _file_refusal(path: Path, status: os.stat_result, grants: str) -> str | None:
    if not status.st_mode & stat.S_IWOTH:
        return None
    return (
        f"{path}: mode {_mode(status)} lets any local user change it, so any of them could {grants} (chmod o-w {path})"
    )


def _directory_refusal(path: Path, directory: Path, status: os.stat_result, grants: str) -> str | None:
    if not _open_to(status, stat.S_IWOTH):
        return None
    return (
        f"{path}: its directory {directory} (mode {_mode(status)}) lets any local user replace the file, so any of "
        f"them could {grants} (chmod o-w {directory}, or chmod +t {directory})"
    )


def _planted_refusal(
    path: Path, opened: os.stat_result, directory: Path, status: os.stat_result, grants: str
) -> str | None:
    """A file owned by another user in a directory anyone may create files in (sticky or not: /tmp): any local user
    could have put it there while the real one was missing."""
    if not status.st_mode & stat.S_IWOTH or opened.st_uid in (os.geteuid(), _ROOT):
        return None
    return (
        f"{path} is owned by {_user(opened.st_uid)} in {directory} (mode {_mode(status)}), where any local user may "
        f"create files, so any of them could have put it there and {grants} (keep the file in a directory only its "
        f"owner may write, or chown it to root)"
    )


def _warnings(place: str, action: str, fix: Path, status: os.stat_result, grants: str, *, directory: bool) -> list[str]:
    """Group-writable, or owned by someone other than the gateway's user or root: the file still serves."""
    found = []
    writable = _open_to(status, stat.S_IWGRP) if directory else bool(status.st_mode & stat.S_IWGRP)
    if writable:
        found.append(
            f"{place} (mode {_mode(status)}) lets group {_group(status.st_gid)} {action}, so its members could {grants} "
            f"(chmod g-w {fix} if they should not)"
        )
    gateway = os.geteuid()
    if status.st_uid not in (gateway, _ROOT):
        trusted = "root, the gateway's user" if gateway == _ROOT else f"the gateway's user {_user(gateway)} or root"
        found.append(
            f"{place} is owned by {_user(status.st_uid)}, not by {trusted}, so that user could {grants} "
            f"(chown {fix} if they should not)"
        )
    return found


def _open_to(status: os.stat_result, bit: int) -> bool:
    """A directory others may add to and remove from: the bit set and no sticky bit (which limits removal and
    renaming to each entry's owner, as in /tmp and a Kubernetes volume's mount)."""
    return bool(status.st_mode & bit) and not status.st_mode & stat.S_ISVTX


def _mode(status: os.stat_result) -> str:
    return f"{stat.S_IMODE(status.st_mode):04o}"


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"
