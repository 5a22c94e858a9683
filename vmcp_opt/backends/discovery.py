"""Discovered mode: backends from an MCP client's own config file, so an existing setup is one flag away.

Reads Claude Desktop's `claude_desktop_config.json` (`mcpServers`), VS Code / Cursor `mcp.json` (`servers`,
or `mcpServers` in Cursor) and VS Code's `settings.json` (`mcp.servers`). Entries with `command` are stdio;
entries with `url` are streamable HTTP unless their `type` says `sse`. A server's name becomes a backend name
(ASCII letters, digits, `_`, `-`); two that come out the same are both served, the second numbered. One that
comes out as a backend of the gateway's own config is not served: that backend wins, with a warning.

The file is read as the clients read it: JSON with comments (`//`, `/* */`) and trailing commas, as VS Code
accepts, after a byte-order mark if an editor wrote one. A file that cannot be read is refused with one line
(invalid JSON with its line and column). A server entry of the wrong shape (`args` not a list of strings,
`env` not an object of strings, `command` not a string, ...) refuses the whole file too, as a bad backend of
the gateway's own config does: every such problem is listed, one line each, naming the file, the server and
the field, and nothing starts half-configured.

An entry that launches this gateway (the `vmcp` command, `python -m vmcp_opt`, or an entry named `vmcp`,
as the `vmcp serve` banner suggests adding) is skipped with a warning: the gateway would start itself, list
its own meta-tools as a backend's, and could recurse.

That check reads commands, and a launcher hides them (`uv run`, `sh -c`, a wrapper script): each gateway it
starts would discover the same file and start the next, without end, until the machine runs out of
processes. So every discovered stdio server also gets `LAUNCHED_FROM` in its environment, the client config
files read by the gateways above it; a gateway started with its own file in that list refuses to start, and
its parent reports that backend down with the reason, once per restart.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Collection
from pathlib import Path, PurePath
from typing import Any

from pydantic import ValidationError

from vmcp_opt import logs
from vmcp_opt.config import BackendConfig, ConfigError

logger = logging.getLogger(__name__)

# Names under which a client config lists this gateway (the banner's snippet says "vmcp").
GATEWAY_NAMES = frozenset({"vmcp", "vmcp-opt", "vmcp_opt"})
# The client config files that the gateways above this process read (os.pathsep between them): set by a
# gateway in each stdio server it discovers, so that one it starts again from the same file can tell.
LAUNCHED_FROM = "VMCP_OPT_LAUNCHED_FROM"


class EntryProblem(ValueError):
    """A server entry of the wrong shape: `field: what was expected, what came`."""


def read_client_config(path: Path, served: Collection[str] = ()) -> list[BackendConfig]:
    """The backends a client config file lists. A file that cannot be read raises `ValueError` (one line);
    server entries of the wrong shape raise `ConfigError`, one `discovery.path: ...` line each.

    `served` names the backends of the gateway's own config: a server that comes out under one of them is
    left out, with a warning that says so (the gateway's config wins: it is the file the operator wrote for
    this gateway, and its backend may carry auth, tool filters or overrides the client's entry cannot)."""
    _refuse_recursion(path)
    servers = _server_table(_parsed(path), path)
    named: list[tuple[str, BackendConfig]] = []
    problems = []
    for name, entry in servers.items():
        if _disabled(entry):
            continue
        if launches_this_gateway(name, entry):
            logs.log_once_configured(
                logger,
                logging.WARNING,
                "discovery: skipping %r in %s: it launches this gateway, which would then start itself",
                name,
                path,
            )
            continue
        try:
            backend = _marked(_backend(name, entry), path)
        except EntryProblem as exc:
            problems.append(f"discovery.path: {path}: server {name!r}: {exc}")
            continue
        named.append((name, backend))
    if problems:
        raise ConfigError(problems)
    return _not_shadowed(_uniquely_named(named, path), served, path)


def _uniquely_named(named: list[tuple[str, BackendConfig]], path: Path) -> list[tuple[str, BackendConfig]]:
    """The backends under names no two share. The clients accept `my server` beside `my-server` (or two names in
    other scripts), which both become `my-server` here: a name the file spells as it is served keeps it, and
    another that comes out the same is served as `my-server-2`, with a warning."""
    taken = {backend.name for entry_name, backend in named if backend.name == entry_name}
    backends = []
    for entry_name, backend in named:
        if backend.name != entry_name:
            backend = _renamed(backend, entry_name, taken, path)
        taken.add(backend.name)
        backends.append((entry_name, backend))
    return backends


def _not_shadowed(named: list[tuple[str, BackendConfig]], served: Collection[str], path: Path) -> list[BackendConfig]:
    """The backends but those named as one of the gateway's config, each left out with a warning."""
    kept = []
    for entry_name, backend in named:
        if backend.name not in served:
            kept.append(backend)
            continue
        logs.log_once_configured(
            logger,
            logging.WARNING,
            "discovery: server %r in %s is not served: the gateway's config has a backend named %r, which wins "
            "over a discovered server of the same name; rename one of them to serve both",
            entry_name,
            path,
            backend.name,
        )
    return kept


def _renamed(backend: BackendConfig, entry_name: str, taken: set[str], path: Path) -> BackendConfig:
    if backend.name not in taken:
        return backend
    number = 2
    while (name := f"{backend.name[:44]}-{number}") in taken:
        number += 1
    logs.log_once_configured(
        logger,
        logging.WARNING,
        "discovery: server %r in %s is served as %r: backend names are ASCII letters, digits, '_' and '-', "
        "and %r is another server's",
        entry_name,
        path,
        name,
        backend.name,
    )
    return backend.model_copy(update={"name": name})


def launches_this_gateway(name: str, entry: Any) -> bool:
    """Whether a client config entry runs vmcp-opt itself: by its name, its command, `python -m vmcp_opt`, or a
    launcher's argument (`uv run vmcp`, `uvx vmcp-opt@1.0`). `LAUNCHED_FROM` catches what this cannot see."""
    if name.strip().lower() in GATEWAY_NAMES:
        return True
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return False
    program = _program(entry["command"])
    if program in GATEWAY_NAMES:
        return True
    args = entry.get("args")
    args = [str(arg) for arg in args] if isinstance(args, list) else []
    if program.startswith("python") and any(
        flag == "-m" and module.split(".")[0] == "vmcp_opt" for flag, module in itertools.pairwise(args)
    ):
        return True
    # `uv run vmcp`, `uvx vmcp-opt`, `python .venv/bin/vmcp`: the usual ways to launch a Python server.
    return (program in _LAUNCHERS or program.startswith("python")) and any(
        re.split(r"[@=<>\[]", _program(arg))[0] in GATEWAY_NAMES
        for arg in args  # a package's version spec
    )


# Programs that run the program named in their arguments.
_LAUNCHERS = frozenset({"uv", "uvx", "pipx", "env"})


def _program(command: str) -> str:
    return PurePath(command.replace("\\", "/")).name.lower().removesuffix(".exe")


def _launched_from() -> list[str]:
    return [part for part in os.environ.get(LAUNCHED_FROM, "").split(os.pathsep) if part]


def _refuse_recursion(path: Path) -> None:
    """Refuse `path` when a gateway above this one read it too: one of its entries started this gateway."""
    if str(path.resolve()) in _launched_from():
        raise ValueError(
            f"{path}: this gateway was started from one of this file's servers by a gateway that reads the file "
            "too, and would start itself again without end; remove the server that runs vmcp from the file, "
            "or name it `vmcp` (discovery skips it)"
        )


def _marked(backend: BackendConfig, path: Path) -> BackendConfig:
    """A stdio backend told which client config files led to it (`LAUNCHED_FROM`), in case it is this gateway."""
    if backend.transport != "stdio":
        return backend
    chain = os.pathsep.join([*_launched_from(), str(path.resolve())])
    return backend.model_copy(update={"env": {**backend.env, LAUNCHED_FROM: chain}})


# --- the file -------------------------------------------------------------------------------------


def _parsed(path: Path) -> Any:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror}") from None
    # UTF-8 with or without a byte-order mark, or UTF-16/32 (a Windows editor's "Unicode"), as RFC 8259 allows.
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        line, column = raw.count(b"\n", 0, exc.start) + 1, exc.start - raw.rfind(b"\n", 0, exc.start)
        where = f"byte {raw[exc.start]:#04x} at line {line}, column {column}"
        raise ValueError(f"{path}: not {name} text ({where}); save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    try:
        plain = strip_jsonc(text)
        if not plain.strip():
            raise ValueError(f"{path}: the file is empty")
        return json.loads(plain)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _server_table(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object, got {_kind(data)}")
    holder, key = data, next((key for key in ("mcpServers", "servers") if key in data), None)
    if key is None and isinstance(data.get("mcp"), dict) and "servers" in data["mcp"]:
        holder, key = data["mcp"], "servers"  # VS Code's settings.json
    if key is None:
        raise ValueError(f"{path}: no `mcpServers` or `servers` object")
    servers = holder[key]
    if not isinstance(servers, dict):
        where = "mcp.servers" if holder is not data else key
        raise ValueError(f"{path}: `{where}` must be an object of servers by name, got {_kind(servers)}")
    return servers


# Strings first, so that `//` or `/*` inside one is text, not a comment; an unterminated string stops at the end
# of its line and is left to the JSON parser to report.
_JSONC_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|/\*.*?(?:\*/|\Z)|[,}\]]|\s+|[^"/,}\]\s]+|/', re.DOTALL)


def strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (VS Code's JSONC) as plain JSON. Comments and dropped commas
    become spaces, keeping their line breaks, so the parser's line and column are the file's own."""
    out: list[str] = []
    comma: int | None = None  # where in `out` a comma that may yet turn out to be trailing is
    after_value = False  # a comma after `[`, `{` or another comma is not trailing but an error: left in
    for match in _JSONC_TOKEN.finditer(text):
        token = match.group()
        if token.startswith(("//", "/*")):
            if token.startswith("/*") and (len(token) < 4 or not token.endswith("*/")):
                raise json.JSONDecodeError("unterminated /* comment", text, match.start())
            out.append(re.sub(r"[^\r\n]", " ", token))
            continue
        if token.isspace():
            out.append(token)
            continue
        if token == ",":
            comma = len(out) if after_value else None
            after_value = False
        elif token in "}]":
            if comma is not None:
                out[comma] = " "
            comma, after_value = None, True
        else:
            comma, after_value = None, not token.endswith(("[", "{", ":"))
        out.append(token)
    return "".join(out)


# --- the entries ----------------------------------------------------------------------------------


def _disabled(entry: Any) -> bool:
    return isinstance(entry, dict) and bool(entry.get("disabled"))


def _backend(name: str, entry: Any) -> BackendConfig:
    if not isinstance(entry, dict):
        raise EntryProblem(f"must be an object, got {_kind(entry)}")
    safe_name = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_")[:48] or "server"
    fields: dict[str, Any] = {"name": safe_name}
    if "command" in entry:
        fields.update(
            transport="stdio",
            command=_text(entry, "command"),
            args=_strings(entry, "args"),
            env=_string_map(entry, "env"),
            cwd=_optional_text(entry, "cwd"),
        )
    elif "url" in entry:
        kind = _optional_text(entry, "type") or ""
        fields.update(
            transport="sse" if kind.lower() == "sse" else "streamable-http",
            url=_text(entry, "url"),
            headers=_string_map(entry, "headers"),
        )
    else:
        raise EntryProblem("has neither `command` (a stdio server) nor `url` (an HTTP server)")
    try:
        return BackendConfig.model_validate(fields)
    except ValidationError as exc:
        raise EntryProblem("; ".join(_reasons(exc))) from None


def _text(entry: dict[str, Any], field: str) -> str:
    value = entry[field]
    if not isinstance(value, str) or not value.strip():
        raise EntryProblem(f"`{field}` must be a non-empty string, got {_kind(value)}")
    return value


def _optional_text(entry: dict[str, Any], field: str) -> str | None:
    value = entry.get(field)
    if value is not None and not isinstance(value, str):
        raise EntryProblem(f"`{field}` must be a string, got {_kind(value)}")
    return value


def _strings(entry: dict[str, Any], field: str) -> list[str]:
    value = entry.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise EntryProblem(f"`{field}` must be an array of strings, got {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise EntryProblem(f"`{field}[{index}]` must be a string, got {_kind(item)}")
    return value


def _string_map(entry: dict[str, Any], field: str) -> dict[str, str]:
    value = entry.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EntryProblem(f"`{field}` must be an object of strings (NAME: value), got {_kind(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise EntryProblem(f"`{field}.{key}` must be a string, got {_kind(item)}")
    return value


def _reasons(exc: ValidationError) -> list[str]:
    """The backend's own checks (a reserved name, a URL's scheme), as `field: reason`."""
    reasons = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        reasons.append(f"{field}: {message}" if field else message)
    return reasons


def _kind(value: Any) -> str:
    """A JSON value's type, as the file's author would name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value!r} (a string)" if len(value) <= 40 else "a string"
    return "an array" if isinstance(value, list) else "an object"
