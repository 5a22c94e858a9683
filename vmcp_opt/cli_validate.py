"""`vmcp validate`'s checks beyond the config's own fields: what `serve` could not launch on this machine
(warnings), and with `--connect` the Redis and backends the config names, and the tools it names against
what they serve (errors)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import anyio
import typer

from vmcp_opt import logs
from vmcp_opt.cli_config import unknown_per_tool, unknown_pinned
from vmcp_opt.config import BackendConfig, VmcpConfig
from vmcp_opt.config.base import ENV_REFERENCE, ENV_REFERENCE_PARTS
from vmcp_opt.console import OutputConsole

err = OutputConsole(stderr=True)

# A first argument with these endings is a script the command runs (`python server.py`, `node index.js`).
_SCRIPT_SUFFIXES = (".py", ".js", ".mjs", ".cjs")
# `python`, `python3`, `python3.12`, `python3.13t`, `pythonw.exe`: their arguments are read as CPython does.
_PYTHON = re.compile(r"python(\d+(\.\d+)?t?)?w?(\.exe)?", re.IGNORECASE)
_NODE = re.compile(r"node(js)?(\.exe)?", re.IGNORECASE)
# CPython's short options that take a value (attached, `-Xutf8`, or the next argument); after -c or -m no
# script runs.
_PYTHON_VALUED = frozenset("XWcm")
_PYTHON_LONG_VALUED = frozenset({"--check-hash-based-pycs"})
# Node's options that take a value as the next argument (also written `--opt=value`), and those that run
# code instead of a script (`-e`, `-p`). Other options are read as flags.
_NODE_VALUED = frozenset(
    {
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--env-file",
        "--input-type",
        "--inspect-port",
        "--title",
        "--watch-path",
        "--experimental-config-file",
    }
)

logger = logging.getLogger(__name__)
_NODE_NO_SCRIPT = frozenset({"-e", "--eval", "-p", "--print", "-i", "--interactive", "-v", "--version", "-h", "--help"})


def launch_warnings(cfg: VmcpConfig) -> list[str]:
    """What `vmcp serve` could not launch on this machine, found as it would launch it (`stdio_launch`):
    a stdio backend whose command is not on PATH or not at its path, whose `cwd` is missing, or whose script
    (`script_argument`: `server.py` in `python -u server.py`) is not in its working directory. Warnings, not
    errors: the file may be meant for another machine, and `vmcp validate --connect` starts each backend to be
    sure."""
    warnings = _index_dir_warnings(cfg)
    for index, backend in enumerate(cfg.backends):
        warnings += _backend_launch_warnings(f"backends[{index}]", backend, Path(cfg.base_dir))
    return warnings


def _backend_launch_warnings(where: str, backend: BackendConfig, base_dir: Path) -> list[str]:
    """What would keep this backend from starting; a path the OS cannot even look up (a NUL byte, a name past
    its length limit) is said so, rather than raised."""
    try:
        return _launch_problems(where, backend, base_dir)
    except (OSError, ValueError) as exc:
        return [
            f"{where}: its command, cwd or script is not a path this machine can look up ({exc}); the backend "
            "would not start"
        ]


def _launch_problems(where: str, backend: BackendConfig, base_dir: Path) -> list[str]:
    from vmcp_opt.backends.launch import stdio_launch

    if backend.transport != "stdio" or backend.command is None:
        return []
    launch = stdio_launch(backend, base_dir)
    cwd = Path(launch.cwd)
    problems = [] if cwd.is_dir() else [f"{where}.cwd: {cwd} is not a directory; the backend would not start"]
    problem = _command_problem(backend.command, launch.command)
    if problem:
        problems.append(f"{where}.command: {problem}; the backend would not start")
    if problems:  # both said at once; a script is looked for only in a directory that is there
        return problems
    script = script_argument(backend.command, launch.args)
    if script is not None and not (cwd / launch.args[script]).exists():
        written = backend.written_arg(script)
        # As the file wrote it when a `${VAR}` expanded in it: its value may be a secret.
        shown = cwd / launch.args[script] if written == launch.args[script] else f"{written!r} (under {cwd})"
        return [
            f"{where}.args[{script}]: {shown} does not exist (relative paths start at the "
            "backend's cwd, which is the config file's directory unless `cwd` says otherwise); the backend "
            "would not start"
        ]
    return []


def counted_names(noun: str, names: list[str]) -> str:
    """`vmcp validate`'s verdict on what a config defines: "1 backend (time)", "2 workflows (a, b)", "0 backends"
    (no empty "()")."""
    listed = f" ({', '.join(names)})" if names else ""
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}{listed}"


def salvaged_launch_warnings(config_path: Path | None) -> list[str]:
    """`launch_warnings` of a config with errors, as far as its file can be read: each backend written in it
    that is valid on its own. One whose launch fields name a `${VAR}` is left out: loading expands those, and
    may not have got that far."""
    from pydantic import ValidationError

    from vmcp_opt.config import DEFAULT_CONFIG_PATH, ConfigError
    from vmcp_opt.config.loading import raw_config

    path = config_path or DEFAULT_CONFIG_PATH
    try:
        raw = raw_config(path)
    except ConfigError:
        return []
    backends, base_dir = raw.get("backends"), raw.get("base_dir")
    base = Path(base_dir) if isinstance(base_dir, str) else path.resolve().parent
    warnings = []
    for index, entry in enumerate(backends if isinstance(backends, list) else []):
        if not isinstance(entry, dict) or _names_a_variable(entry):
            continue
        try:
            backend = BackendConfig.model_validate(entry)
        except ValidationError:
            continue  # among the errors printed
        warnings += _backend_launch_warnings(f"backends[{index}]", backend, base)
    return warnings


def _names_a_variable(entry: dict[str, Any]) -> bool:
    env = entry.get("env")
    launch = [entry.get("command"), entry.get("cwd"), *_listed(entry.get("args"))]
    launch += list(env.values()) if isinstance(env, dict) else []
    return any(isinstance(value, str) and ENV_REFERENCE.search(value) for value in launch)


def _listed(value: object) -> list[object]:
    return value if isinstance(value, list) else []


@contextmanager
def warnings_beside_errors(warnings: Callable[[], list[str]]) -> Iterator[None]:
    """Around what prints a config's errors and exits 2: then `warnings()` too, under a heading of their own, so
    a user fixing the errors learns now, not on the next run, that a backend would not start either."""
    try:
        yield
    except typer.Exit as exit_:
        found = []
        if exit_.exit_code == 2:
            try:
                found = warnings()
            except Exception:  # the errors are what this run is for: a salvage that fails must not hide them
                logger.debug("launch warnings beside the errors: not found", exc_info=True)
        if found:
            err.print("[yellow]and warnings[/] (what `vmcp serve` could not launch, of the backends that are valid):")
            for warning in found:
                err.print(f"  warning: {warning}", markup=False, highlight=False)
        raise


def script_argument(command: str, args: list[str]) -> int | None:
    """The index in `args` of the script `command` would run, or None (none, or not known). Python's and
    node's options are skipped as they read them (`python -u -X utf8 server.py`; `-m module` and `-c code`
    run no script); any other command's first argument counts when it ends like a script."""
    name = PurePath(command.replace("\\", "/")).name
    if _PYTHON.fullmatch(name):
        return _python_script(args)
    if _NODE.fullmatch(name):
        script = _node_script(args)
        # Node resolves `node server` to server.js, index.js, a package's main: only a written ending is sure.
        return script if script is not None and args[script].endswith(_SCRIPT_SUFFIXES) else None
    return 0 if args and args[0].endswith(_SCRIPT_SUFFIXES) else None


def _python_script(args: list[str]) -> int | None:
    """CPython's command line: short options may be grouped (`-uB`), and one of -X -W -c -m ends a group,
    taking the rest of the argument or the next one as its value."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return index + 1 if index + 1 < len(args) else None
        if arg == "-":
            return None  # the script comes on stdin
        if not arg.startswith("-"):
            return index
        if arg.startswith("--"):
            index += 2 if arg in _PYTHON_LONG_VALUED else 1
            continue
        valued = next((i for i, flag in enumerate(arg[1:], 1) if flag in _PYTHON_VALUED), None)
        if valued is not None and arg[valued] in "cm":
            return None
        index += 2 if valued is not None and valued == len(arg) - 1 else 1
    return None


def _node_script(args: list[str]) -> int | None:
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return index + 1 if index + 1 < len(args) else None
        if arg == "-" or arg in _NODE_NO_SCRIPT or arg.split("=", 1)[0] in ("--eval", "--print"):
            return None
        if not arg.startswith("-"):
            return index
        index += 2 if arg in _NODE_VALUED else 1
    return None


def nothing_served_warnings(cfg: VmcpConfig) -> list[str]:
    """A config that serves nothing (an empty file, `backends:` left out or misplaced) is valid, and `serve`
    would start and answer every client with no tools; and a `discovery.path` that inline mode never reads,
    whose servers the user expects."""
    warnings = []
    if cfg.discovery.mode == "inline" and cfg.discovery.path:
        warnings.append(
            f"discovery.path: {cfg.discovery.path} is not read, since discovery.mode is inline "
            "(mode: discovered serves its servers too)"
        )
    if not cfg.backends and not cfg.workflows:
        warnings.append(
            "backends: none, so the gateway would serve no tools, prompts or resources "
            "(list servers under `backends:`, or read a desktop client's with discovery: {mode: discovered, path: ...})"
        )
    return warnings


def prefix_overlap_warnings(cfg: VmcpConfig) -> list[str]:
    """Backends `h` and `h_demo` under `prefix`: h's tool `demo_save` and h_demo's `save` are both exposed as
    `h_demo_save`. Only one is served (priority, then config order, conflicts.py), and `h` can list such a name
    at any time; names that cannot meet keep each backend's tools its own."""
    aggregation = cfg.aggregation
    between = _prefix_separator(aggregation.prefix_format)
    if aggregation.conflict_resolution != "prefix" or between is None:
        return []
    text, backend_first = between
    names = [backend.name for backend in cfg.backends]
    warnings = []
    for short_index, short in enumerate(names):
        for long_index, long in enumerate(names):
            meets = long.startswith(short + text) if backend_first else long.endswith(text + short)
            if long_index == short_index or long == short or not meets:
                continue
            example = aggregation.prefix_format.format(backend=long, name="x")
            warnings.append(
                f"backends[{long_index}].name: {long!r} {'begins' if backend_first else 'ends'} with "
                f"backends[{short_index}].name {short!r} and {text!r}, so under aggregation.prefix_format both "
                f"backends can serve a tool or prompt named like {example!r}, and only one is served; "
                "rename one of them"
            )
    return warnings


def _prefix_separator(prefix_format: str) -> tuple[str, bool] | None:
    """The text `prefix_format` puts between the backend's name and the item's, and whether the backend's
    comes first; None unless each appears once."""
    backend, name = "\0backend\0", "\0name\0"
    made = prefix_format.format(backend=backend, name=name)
    if made.count(backend) != 1 or made.count(name) != 1:
        return None
    at_backend, at_name = made.index(backend), made.index(name)
    if at_backend < at_name:
        return made[at_backend + len(backend) : at_name], True
    return made[at_name + len(name) : at_backend], False


def empty_reference_warnings(config_path: Path | None) -> list[str]:
    """`${VAR}`s in the file's backends whose variable is set but empty (`export DOCS_TOKEN=` of a secret not
    yet filled in): an unset one is an error, an empty one is expanded to nothing and the backend is sent
    `Authorization: Bearer ` without a word."""
    from vmcp_opt.config import DEFAULT_CONFIG_PATH, ConfigError
    from vmcp_opt.config.loading import raw_config

    try:
        backends = raw_config(config_path or DEFAULT_CONFIG_PATH).get("backends")
    except ConfigError:
        return []
    warnings = []
    for index, backend in enumerate(backends if isinstance(backends, list) else []):
        if not isinstance(backend, dict):
            continue
        for place, value in _expanded_fields(backend, f"backends[{index}]"):
            warnings += [  # `${VAR:-default}` takes its default for an empty variable: nothing to warn of
                f"{place}: ${{{found['name']}}} is set but empty, so the backend gets an empty value here"
                for found in ENV_REFERENCE_PARTS.finditer(value)
                if os.environ.get(found["name"]) == "" and found["op"] != ":-"
            ]
    return warnings


def _expanded_fields(backend: dict[str, object], where: str) -> list[tuple[str, str]]:
    """The backend fields where loading expands `${VAR}` (env, headers, args, url), by their path."""
    fields: list[tuple[str, object]] = []
    for kind in ("env", "headers"):
        mapping = backend.get(kind)
        fields += [
            (f"{where}.{kind}.{key}", value) for key, value in (mapping.items() if isinstance(mapping, dict) else [])
        ]
    args = backend.get("args")
    fields += [(f"{where}.args[{i}]", arg) for i, arg in enumerate(args if isinstance(args, list) else [])]
    fields.append((f"{where}.url", backend.get("url")))
    return [(place, value) for place, value in fields if isinstance(value, str)]


def exchange_warnings(cfg: VmcpConfig) -> list[str]:
    """token_exchange backends whose calls would all fail, since no caller has an OAuth token to exchange:
    callers with API keys (a key never leaves the gateway), or the local user over stdio. Warnings, where an
    anonymous HTTP gateway's is an error (config/document.py): a file served over stdio may be served over
    HTTP with OAuth too, and the backend's tools are still listed."""
    exchanged = [index for index, backend in enumerate(cfg.backends) if backend.auth.type == "token_exchange"]
    if not exchanged:
        return []
    if cfg.server.transport == "stdio":
        why = "over stdio (server.transport) the caller is the local user, who presents no token"
    elif cfg.auth.incoming.mode == "api_keys":
        why = "auth.incoming.mode is api_keys, and an API key is never sent to a token endpoint"
    else:
        return []
    return [
        f"backends[{index}].auth.type: token_exchange exchanges each caller's OAuth access token, but {why}: "
        "every call of this backend's tools would fail (auth.incoming.mode: oauth over HTTP gives callers one)"
        for index in exchanged
    ]


def _index_dir_warnings(cfg: VmcpConfig) -> list[str]:
    """An index_dir that is (or sits under) a file: the gateway serves, but saves no index, vectors or usage
    history, and embeds the whole catalogue again at every start."""
    if not cfg.optimizer.enabled:
        return []
    directory = cfg.index_dir()
    blocking = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocking is None or blocking.is_dir():
        return []
    return [
        f"optimizer.index_dir: {blocking} is a file, not a directory; the gateway would serve but save no index "
        "(the whole catalogue embedded again at every start, nothing learned from use kept)"
    ]


def _command_problem(written: str, resolved: str) -> str | None:
    """Why `resolved` (`written`, looked up on PATH or placed under the config's directory) cannot be run."""
    path = Path(resolved)
    if not path.is_absolute():
        return f"{written!r} is not found on PATH"
    if not path.is_file():
        return f"{path} does not exist" if not path.exists() else f"{path} is not a file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable (chmod +x it, or run it with its interpreter: command: python, args: [it])"
    return None


def _check_redis(cfg: VmcpConfig) -> None:
    """`validate --connect`: the Redis the config uses answers with the password given (exit 1 naming why not)."""
    from vmcp_opt.shared.secrets import redis_users

    if not redis_users(cfg):
        return
    from vmcp_opt.shared.redis_client import redis_problem

    problem = redis_problem(cfg)
    if problem is not None:
        err.print(f"[bold red]Redis does not serve this gateway[/]: {problem}", highlight=False)
        raise typer.Exit(1)


def _check_replicas(cfg: VmcpConfig) -> None:
    """`validate --connect` with `sessions.store: redis`: the running replicas whose catalogue settings differ
    from this config's (shared/replica_shapes.py), as a warning: a config validated before a rolling update
    differs from the running replicas on purpose, and they would disagree only until the update is done."""
    if cfg.sessions.store != "redis":
        return
    import redis

    from vmcp_opt.shared.redis_client import redis_sync_client
    from vmcp_opt.shared.replica_shapes import differences_from_running

    client = redis_sync_client(cfg)
    try:
        differing = differences_from_running(cfg, client)
    except (redis.RedisError, OSError) as exc:
        err.print(f"[yellow]warning[/]: running replicas not compared: {exc}", highlight=False)
        return
    finally:
        client.close()
    if not differing:
        return
    err.print(
        f"[yellow]warning[/]: running replicas (redis.key_prefix {cfg.redis.key_prefix!r}) serve another catalogue "
        "than this config; sessions move between replicas, so clients would see tools appear and vanish:",
        highlight=False,
    )
    for replica, said in differing.items():
        err.print(f"  replica {replica}: {'; '.join(said)}", markup=False, highlight=False)


def check_connections(cfg: VmcpConfig) -> None:
    """`validate --connect`: Redis, if the config uses it (and the running replicas' catalogues), and each backend connected once (exit 1 naming what
    failed, as `vmcp backends` does), then the workflow steps, pinned names and rate_limits.per_tool keys
    checked against the tools served (exit 2 naming the unknown ones)."""
    from vmcp_opt.config.workflows import RESERVED_NAMES
    from vmcp_opt.probe import connect_once
    from vmcp_opt.workflows.validation import unknown_tools

    logs.configure("error")
    _check_redis(cfg)
    _check_replicas(cfg)
    connected = anyio.run(connect_once, cfg)
    if connected.failed:
        err.print(f"[bold red]backends that did not connect[/] ({len(connected.failed)} of {len(cfg.backends)}):")
        for name, reason in connected.failed.items():
            err.print(f"  {name}: {reason}", markup=False, highlight=False)
        if cfg.workflows:  # their steps' tools are missing too: checking them now would only repeat this
            err.print("  (workflow steps not checked until every backend connects)")
        raise typer.Exit(1)
    served = connected.tool_names
    steps_may_call = served | connected.workflow_only
    if cfg.optimizer.enabled:  # the gateway serves its meta-tools then, and a step may call them as a client does
        steps_may_call |= RESERVED_NAMES
    problems = (
        unknown_tools(cfg.workflows, steps_may_call) + unknown_pinned(cfg, served) + unknown_per_tool(cfg, served)
    )
    if problems:
        err.print("[bold red]the config names tools the backends do not serve[/]:")
        for problem in problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(2)
