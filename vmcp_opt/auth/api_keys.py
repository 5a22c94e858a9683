"""API keys sent as bearer tokens, known to the gateway only by their SHA-256 hashes.

A key is a random 32-byte secret (`vmcp auth new-key` makes one and prints its entry): with that much
entropy a plain SHA-256 cannot be reversed or guessed, so no slow password hash is needed and a lookup is one
hash and one dict access. The entries come from a file, re-read whenever it changes (a key is rotated or
revoked by editing the file, no restart), and from an environment variable read at start. A file that
cannot be read or parsed while serving (not UTF-8 included) is fail-closed: the error is logged once and no key
from it is accepted until it is fixed.

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
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmcp_opt.auth import errors
from vmcp_opt.auth.caller import Identification
from vmcp_opt.auth.identity import Identity, string_set

logger = logging.getLogger(__name__)

KEY_PREFIX = "vmcp_"
# The entry's fields that name what the caller is a member of or holds, as `Identity` and Cedar see them.
NAME_LISTS = ("groups", "roles", "scopes")


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
    signature: tuple[int, int, int] | None
    keys: Mapping[str, Identity]


class ApiKeys:
    def __init__(self, file: Path | None, env_entries: str | None = None) -> None:
        self.file = file
        self._env_keys = parse_entries(_json(env_entries), "the API keys variable") if env_entries else {}
        self._state = _FileState(None, {})
        if file is not None:
            self._state = _FileState(
                _signature(file), parse_entries(_read(file), str(file))
            )  # a bad file stops the start

    async def authenticate(self, key: str) -> Identity:
        digest = hash_key(key)
        identity = self._current().get(digest) or self._env_keys.get(digest)
        if identity is None:
            raise errors.invalid_token("unknown or revoked API key")
        return identity

    def __len__(self) -> int:
        return len(self._current()) + len(self._env_keys)

    def _current(self) -> Mapping[str, Identity]:
        """The file's keys, re-read when its inode, size or mtime changed (one stat per request)."""
        if self.file is None:
            return self._state.keys
        signature = _signature(self.file)
        if signature == self._state.signature:
            return self._state.keys
        try:
            keys = parse_entries(_read(self.file), str(self.file)) if signature is not None else {}
        except ApiKeyFileError as exc:
            logger.error("auth: API keys not reloaded, none from the file accepted until it is fixed: %s", exc)
            keys = {}
        else:
            logger.info("auth: %d API keys loaded from %s", len(keys), self.file)
        self._state = _FileState(signature, keys)
        return keys


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
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
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


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ApiKeyFileError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ApiKeyFileError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ApiKeyFileError(f"{path}: not valid YAML/JSON: {exc}") from None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
