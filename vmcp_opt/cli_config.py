"""The configuration as a `vmcp` command sees it: the file, the environment and the command's own flags,
loaded once, every problem printed by where it came from (`server.port (from --port): ...`), exit 2."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, NoReturn

import typer

from vmcp_opt import logs
from vmcp_opt.config import DEFAULT_CONFIG_PATH, BackendConfig, ConfigError, VmcpConfig, load_config
from vmcp_opt.config.suggestions import closest
from vmcp_opt.console import OutputConsole

err = OutputConsole(stderr=True)
logger = logging.getLogger("vmcp_opt.cli")


def load_or_exit(path: Path | None, overrides: dict[str, Any] | None = None, json_logs: bool = False) -> VmcpConfig:
    """Load the config; on a bad one, print every problem as `field.path: reason` and exit 2 (as one JSON log
    record with `json_logs`)."""
    from vmcp_opt.optimizer.model_registry import model_problem

    flags = {dotted: _FLAGS.get(dotted, "the command line") for dotted in _dotted_paths(overrides or {})}

    def warn(line: str) -> None:  # held until the log format is set (`--log-format json`: one record, not a line)
        logs.log_once_configured(logger, logging.WARNING, "%s", line)

    try:
        config = load_config(
            path, overrides, discover=_read_client_config, check_model=model_problem, flags=flags, warn=warn
        )
    except ConfigError as exc:
        exit_invalid(path, exc.problems + client_config_hint(path), json_logs)
    for finding in config_file_exposure(config.source):
        warn(finding)
    return config


def _read_client_config(path: Path, served: Collection[str]) -> list[BackendConfig]:
    """backends/discovery.py's reader, imported by a config in discovered mode only: importing the backends
    package loads the MCP SDK (half a second of every command that loads a config)."""
    from vmcp_opt.backends.discovery import read_client_config

    return read_client_config(path, served)


# What a writer of the config file could do, for the warning about who else can (auth/file_modes.py).
_CONFIG_GRANTS = "change the gateway's settings: turn authentication off, or name a backend command it runs"


def config_file_exposure(path: Path | None) -> list[str]:
    """Who besides the gateway's user could change its config file: a warning each, never a refusal (the file
    decides `auth.strict_file_modes` itself, and a refusal after an upgrade would stop a gateway that ran)."""
    from vmcp_opt.auth.file_modes import exposure

    if path is None:
        return []
    try:
        found = exposure(path, path.stat(), _CONFIG_GRANTS)
    except OSError:
        return []  # read a moment ago: gone since, nothing to say about its mode
    return [*([found.refusal] if found.refusal else []), *found.warnings]


# Where an MCP client keeps its servers: Claude Desktop and Cursor (`mcpServers`), VS Code's mcp.json
# (`servers`) and settings.json (`mcp: {servers: ...}`).
_CLIENT_SERVER_KEYS = ("mcpServers", "servers", "mcp.servers")
# Those files by name: VS Code's may hold comments, which no YAML parser reads, so their keys go unseen.
_CLIENT_FILE_NAMES = frozenset({"claude_desktop_config.json", "mcp.json", "settings.json"})


def client_config_hint(path: Path | None) -> list[str]:
    """The way out when `-c` names a desktop client's own MCP file (`claude_desktop_config.json`, an mcp.json):
    its `mcpServers` is otherwise only an unknown key "to check the spelling of", and nothing says the gateway
    reads such a file through `discovery`. Empty for any other file."""
    from vmcp_opt.config.loading import raw_config

    if path is None:
        return []
    try:
        raw, unreadable = raw_config(path), False
    except ConfigError:
        raw, unreadable = {}, True
    found = next((dotted for dotted in _CLIENT_SERVER_KEYS if _looks_like_servers(_at(raw, dotted))), None)
    if found is None and not (unreadable and path.name in _CLIENT_FILE_NAMES):
        return []
    what = f"its servers are under `{found}`" if found else f"`{path.name}` is where MCP clients list theirs"
    return [
        f"{path}: this looks like an MCP client's own config ({what}), not one of vmcp-opt's: to serve its "
        "servers, give `-c` a vmcp-opt config that reads it, such as "
        f"`discovery: {{mode: discovered, path: {path.resolve()}}}` (README, Discovered mode)"
    ]


def _at(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _looks_like_servers(value: Any) -> bool:
    """A mapping of server names to launch entries (`command` or `url`), as MCP clients write them."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(entry, dict) and ("command" in entry or "url" in entry) for entry in value.values())
    )


def exit_invalid(path: Path | None, problems: list[str], json_logs: bool = False) -> NoReturn:
    """Every problem of the config at `path`, one `field.path: reason` line each; exit 2.

    With `json_logs`, one error record whose `problems` lists them: one failed start is one event for a log
    pipeline (one alert, one count), its problems kept together rather than interleaved with other lines."""
    if json_logs:
        where = str(path or DEFAULT_CONFIG_PATH)
        summary = "; ".join(problems)
        logs.log_fatal(logger, "invalid configuration (%s): %s", where, summary, config=where, problems=problems)
        raise typer.Exit(2)
    err.print(f"[bold red]invalid configuration[/] ({path or DEFAULT_CONFIG_PATH}):")
    for problem in problems:
        err.print(f"  {problem}", markup=False, highlight=False)
    raise typer.Exit(2)


def fatal(code: int, markup: str, plain: str, json_logs: bool, **fields: Any) -> NoReturn:
    """End a command on an error found before it could start: `markup` on stderr, or under `json_logs` one
    JSON error record (`plain` as its message, `fields` beside it); exit `code` either way."""
    if json_logs:
        logs.log_fatal(logger, "%s", plain, **fields)
    else:
        err.print(markup, highlight=False)
    raise typer.Exit(code)


def json_logs_requested(path: Path | None, flag: str | None) -> bool:
    """Whether `serve` was asked for JSON logs, by the source that wins as loading merges them (the flag, the
    environment, the file), before the config is known valid: its errors are then JSON lines too."""
    if flag is not None:
        return flag == "json"
    env = [value for name, value in os.environ.items() if name.lower() == "vmcp_server__log_format"]
    if env:
        return env[-1] == "json"
    from vmcp_opt.config.loading import raw_config  # the file as loading reads it, whatever else is wrong

    try:
        server = raw_config(path or DEFAULT_CONFIG_PATH).get("server")
    except ConfigError:
        return False
    return isinstance(server, dict) and server.get("log_format") == "json"


def unknown_pinned(cfg: VmcpConfig, served: Collection[str]) -> list[str]:
    """`optimizer.pinned[i]: unknown tool 'x' ...` for every pinned name that neither the live catalogue
    (`served`, what `vmcp validate --connect` found with every backend connected) nor a workflow serves, with
    the closest served names: a misspelt pin is otherwise only a warning in the running gateway's log."""
    known = set(served) | {workflow.name for workflow in cfg.workflows}
    problems = []
    for i, name in enumerate(cfg.optimizer.pinned):
        if name in known:
            continue
        close = _closest(name, known)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.append(f"optimizer.pinned[{i}]: unknown tool {name!r} (no backend or workflow serves it now){hint}")
    return problems


def unknown_per_tool(cfg: VmcpConfig, served: Collection[str]) -> list[str]:
    """`rate_limits.per_tool.x: unknown tool 'x' ...` for every limited name that neither the live catalogue
    (`served`) nor the gateway itself serves: a misspelt key's limit never applies, without a word."""
    known = set(served) | cfg.own_tool_names()
    problems = []
    for name in cfg.rate_limits.per_tool:
        if name in known:
            continue
        close = _closest(name, known)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.append(
            f"rate_limits.per_tool.{name}: unknown tool {name!r} (no backend, workflow or meta-tool serves it "
            f"now, so its limit never applies){hint}"
        )
    return problems


def _closest(name: str, known: Collection[str], most: int = 3) -> list[str]:
    """The served names most like `name`, best first: those near the best one only, since the names of one
    backend share its prefix and would otherwise all look close (`notes_save_nte`: not `notes_search_notes`)."""
    return closest(name, known, cutoff=0.6, most=most)


# The flags `serve` turns into overrides, by setting: a bad value is reported by its flag.
_FLAGS = {
    "server.host": "--host",
    "server.port": "--port",
    "server.transport": "--stdio",
    "server.log_level": "--log-level",
    "server.log_format": "--log-format",
    "optimizer.enabled": "--optimizer/--no-optimizer",
}


def _dotted_paths(nested: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings an override dict sets: {"server": {"port": 1}} → ["server.port"]."""
    paths = []
    for key, value in nested.items():
        path = f"{prefix}{key}"
        paths += _dotted_paths(value, f"{path}.") if isinstance(value, dict) else [path]
    return paths


def command_overrides(**values: Any) -> dict[str, Any]:
    """CLI flags as a nested override dict (`server.port` → {"server": {"port": ...}}); None means unset."""
    nested: dict[str, Any] = {}
    for dotted, value in values.items():
        if value is None:
            continue
        section, key = dotted.split("__")
        nested.setdefault(section, {})[key] = value
    return nested
