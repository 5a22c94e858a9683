"""API keys sent as bearer tokens, known to the gateway only by their SHA-256 hashes.

A key is a random 32-byte secret (`vmcp auth new-key` makes one and prints its entry): with that much
entropy a plain SHA-256 cannot be reversed or guessed, so no slow password hash is needed and a lookup is one
hash and one dict access. The entries come from a file, re-read whenever it changes (a key is rotated or
revoked by editing the file, no restart), and from an environment variable read at start. A file that
cannot be read or parsed while serving (not UTF-8, or larger than `MAX_FILE_BYTES`, included) is fail-closed:
the error is logged once and no key from it is accepted until it is fixed (a botched revocation must not leave
the revoked key working). So is a file any local user could change (auth/file_modes.py: o+w, or in a directory
others may write to without the sticky bit): since it is re-read, anyone on the host could add a key with any
groups or roles, no restart needed. A file only its group or another user could change is loaded, with one warning.
At start either refusal stops the start, as `vmcp validate` says.

The re-read runs in a worker thread, one at a time (`SingleFlight`), so the event loop keeps serving: 10,000
YAML entries take seconds to parse even with libyaml (as JSON, a few hundredths of a second). Each request stats
the file; the request that notices a change waits for the re-read it starts, so an edit followed by a request is
seen by that request. Requests arriving while the re-read runs are served with the previous keys when they hold
a key from them (or from the variable); others (a key just added, or none known) wait for the new keys, at most
`REREAD_WAIT`. So a revoked key works at most until the re-read that began after the edit completes
(`bench/api_keys_reload.py` times it). The thread holds the GIL for much of a YAML parse: requests are slower
meanwhile, not stopped.

Entry: `{sha256: <hex of the key's hash>, subject: alice, groups: [dev], roles: [], scopes: [], name: laptop}`.
`groups`, `roles` and `scopes` are lists of names (or one space- or comma-separated string); anything else in
them (a number, an empty name, a mapping) is refused with the entry's place rather than dropped, since a
dropped role is a caller the policy silently treats as someone else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import yaml

from vmcp_opt.auth import errors, file_modes
from vmcp_opt.auth.caller import Identification
from vmcp_opt.auth.identity import Identity, refuse_lone_surrogates, string_set
from vmcp_opt.single_flight import SingleFlight

logger = logging.getLogger(__name__)

KEY_PREFIX = "vmcp_"
# The entry's fields that name what the caller is a member of or holds, as `Identity` and Cedar see them.
NAME_LISTS = ("groups", "roles", "scopes")
# About 45,000 entries with every field; a bigger file is refused rather than parsed for minutes.
MAX_FILE_BYTES = 8 * 1024 * 1024
# How long a request whose key the previous keys lack waits for a re-read before a 503 (a re-read of a file at
# the size bound takes seconds; this is for a file system that hangs).
REREAD_WAIT = 60.0
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# libyaml's loader: several times quicker than the pure-Python one, for the same documents.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_REREAD = "file"  # the one flight key: one re-read at a time
# What a writer of the keys file could do, for the messages about who can write it.
_GRANTS = "add an API key with any groups or roles"


class ApiKeyFileError(Exception):
    """The keys file or variable cannot be used; the message names the place and the entry."""


def new_key() -> tuple[str, str]:
    """A fresh key and the SHA-256 hex of it (the only thing the gateway stores)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _FileState:
    signature: tuple[int, ...] | None
    keys: Mapping[str, Identity]
    # The directories whose mode and owner the signature covers (file_modes.directories at the last read).
    directories: tuple[Path, ...] = ()
    # Who else could change the file, as last logged: a re-read logs only what is new.
    warnings: tuple[str, ...] = ()


class ApiKeys:
    def __init__(self, file: Path | None, env_entries: str | None = None, *, strict_modes: bool = True) -> None:
        self.file = file
        self.strict_modes = strict_modes  # auth.strict_file_modes (file_modes.exposure)
        self._env_keys = parse_entries(_json(env_entries), "the API keys variable") if env_entries else {}
        self._state = _FileState(None, {})
        if file is not None:
            directories = file_modes.directories(file)
            signature = _signature(file, directories)
            document, warnings = _read(file, strict_modes)  # a bad file stops the start
            self._state = _FileState(signature, parse_entries(document, str(file)), directories, warnings)
            _warn(warnings, ())
        self._rereads: SingleFlight[str, _FileState] = SingleFlight(
            REREAD_WAIT, lambda: errors.unavailable("the API keys file is being re-read; try again")
        )
        # Set, and replaced, at each re-read: what streams held open under a key wait on (`reloaded`).
        self._reread_done: anyio.Event | None = None

    async def authenticate(self, key: str) -> Identity:
        digest = hash_key(key)
        identity = (await self._file_keys(digest)).get(digest) or self._env_keys.get(digest)
        if identity is None:
            raise errors.invalid_token("unknown or revoked API key")
        return identity

    async def reloaded(self) -> None:
        """Returns once the keys file is next re-read: a stream held open under a key checks it again then, so
        a revoked key's streams end at the first request after the edit, not at their next periodic check."""
        if self._reread_done is None:
            self._reread_done = anyio.Event()
        await self._reread_done.wait()

    def __len__(self) -> int:
        return len(self._state.keys) + len(self._env_keys)

    async def _file_keys(self, digest: str) -> Mapping[str, Identity]:
        """The file's keys, re-read when it changed (`_signature`: a stat of it and of its directory per request);
        the previous keys while a re-read runs if they (or the variable's) hold `digest` (the module's docstring)."""
        file = self.file
        if file is None:
            return self._state.keys
        signature = _signature(file, self._state.directories)
        state = await self._rereads.get(
            _REREAD,
            lambda: self._reread(file, self._state.warnings),
            ready=lambda: self._state if self._state.signature == signature else None,
            meanwhile=lambda: self._state if digest in self._state.keys or digest in self._env_keys else None,
        )
        return state.keys

    async def _reread(self, file: Path, warned: tuple[str, ...]) -> _FileState:
        """Re-read the file in a worker thread and swap its keys in. Not cut short by a cancelled caller (the
        thread runs on regardless), so a new re-read never starts beside it."""
        state = await anyio.to_thread.run_sync(_load, file, warned, self.strict_modes)
        self._state = state
        done, self._reread_done = self._reread_done, None
        if done is not None:
            done.set()
        return state


def _load(path: Path, warned: tuple[str, ...], strict_modes: bool = True) -> _FileState:
    """The file's keys, or none with the error logged (fail-closed). Stat first: a change made while the file is
    read leaves a signature that differs from the one recorded, so it is read again, never missed. `warned`: who
    else could change it, as logged before (not logged again)."""
    directories = file_modes.directories(path)
    signature = _signature(path, directories)
    try:
        document, warnings = _read(path, strict_modes)
        keys = parse_entries(document, str(path))
    except ApiKeyFileError as exc:
        logger.error("auth: API keys not reloaded, none from the file accepted until it is fixed: %s", exc)
        return _FileState(signature, {}, directories, warned)
    _warn(warnings, warned)
    logger.info("auth: %d API keys loaded from %s", len(keys), path)
    return _FileState(signature, keys, directories, warnings)


def _warn(warnings: tuple[str, ...], warned: tuple[str, ...]) -> None:
    for warning in warnings:
        if warning not in warned:
            logger.warning("auth: API keys file loaded, but %s", warning)


def parse_entries(data: Any, where: str) -> dict[str, Identity]:
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ApiKeyFileError(f"{where}: expected a list of keys (or `keys:` holding one)")
    keys: dict[str, Identity] = {}
    for index, entry in enumerate(entries):
        place = f"{where}: keys[{index}]"
        if not isinstance(entry, dict):
            raise ApiKeyFileError(f"{place}: expected a mapping")
        digest, subject = entry.get("sha256"), entry.get("subject")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ApiKeyFileError(f"{place}.sha256: expected 64 lowercase hex digits (vmcp auth new-key)")
        if not isinstance(subject, str) or not subject:
            raise ApiKeyFileError(f"{place}.subject: expected a non-empty string")
        unknown = set(entry) - {"sha256", "subject", *NAME_LISTS, "name"}
        if unknown:
            raise ApiKeyFileError(f"{place}: unknown keys {sorted(unknown)}")
        for field in NAME_LISTS:
            if entry.get(field) is not None and not _names(entry[field]):
                raise ApiKeyFileError(
                    f"{place}.{field}: expected a list of non-empty strings (or one space- or comma-separated string)"
                )
        if entry.get("name") is not None and not isinstance(entry["name"], str):
            raise ApiKeyFileError(f"{place}.name: expected a string")
        for field in ("subject", "name", *NAME_LISTS):
            try:
                refuse_lone_surrogates(field, entry.get(field))
            except ValueError:
                raise ApiKeyFileError(f"{place}.{field}: not valid Unicode text (a lone UTF-16 surrogate)") from None
        if digest in keys:
            raise ApiKeyFileError(f"{place}.sha256: the same key as an earlier entry (one key, one caller)")
        keys[digest] = Identity(
            subject=subject,
            method=Identification.API_KEY,
            groups=string_set(entry.get("groups")),
            roles=string_set(entry.get("roles")),
            client_id=entry.get("name") if isinstance(entry.get("name"), str) else None,
            scopes=string_set(entry.get("scopes")),
        )
    return keys


def _names(value: Any) -> bool:
    """A list of non-empty strings, or one string (split on spaces and commas, as `string_set` does)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(item, str) and item.strip() for item in value)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiKeyFileError(f"the API keys variable: not valid JSON: {exc}") from None


def _read(path: Path, strict_modes: bool = True) -> tuple[Any, tuple[str, ...]]:
    """The file's document (JSON for a `.json` file, YAML with libyaml's loader otherwise; at most `MAX_FILE_BYTES`)
    and who else could change it (file_modes.py); refused when anyone could."""
    try:
        with path.open("rb") as file:
            found = file_modes.exposure(path, os.fstat(file.fileno()), _GRANTS, strict=strict_modes)
            if found.refusal is not None:
                raise ApiKeyFileError(found.refusal)
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ApiKeyFileError(f"{path}: cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ApiKeyFileError(
            f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; split the keys or prune them"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ApiKeyFileError(
            f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    # A UTF-8 byte-order mark, which an editor may add while the gateway runs: JSON refused it, and with it every key.
    text = text.removeprefix("\ufeff")
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YAML_LOADER)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ApiKeyFileError(f"{path}: not valid YAML/JSON: {exc}") from None
    except RecursionError:  # nested past the parser's stack: refused as any unparseable file (fail-closed)
        raise ApiKeyFileError(f"{path}: nested too deeply to be a keys file") from None
    return document, found.warnings


def _signature(path: Path, directories: tuple[Path, ...]) -> tuple[int, ...] | None:
    """What tells an edited file from the one read: the ctime too, which any write, `utime` or `chmod` sets to now
    (an in-place edit keeping size and mtime, `cp -p` or `touch -r`, was never re-read: a revoked key kept
    working); its mode and owners, which a `chmod` within the clock's tick leaves the ctime without; and its
    directories' modes and owners, so a `chmod o-w` of the directory is noticed too."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    own = stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_mode, stat.st_uid, stat.st_gid
    return (*own, *file_modes.signature(directories))
