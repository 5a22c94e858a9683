"""What `vmcp serve` does around its listener: the address checked before any backend starts, and the banner
once it listens (the URL, how to try it, a Claude Desktop snippet; one JSON record under `--log-format json`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from vmcp_opt.cli_config import fatal
from vmcp_opt.config import DEFAULT_CONFIG_PATH, PROJECT_ROOT, ConfigError, VmcpConfig
from vmcp_opt.config.base import ENV_REFERENCE
from vmcp_opt.console import OutputConsole

logger = logging.getLogger("vmcp_opt.cli")  # the banner's record keeps the logger it always had


class _BannerConsole(OutputConsole):
    """stdout for the banner, printed while the gateway starts serving: a stdout that fails (its reader gone,
    `vmcp serve | head -1`; a full disk) must cost the banner, not the gateway. rich answers a broken pipe by
    exiting the process; here it is an `OSError` like any other, which `announce` catches."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")


out = _BannerConsole()


def exit_if_port_taken(host: str, port: int, json_logs: bool = False) -> None:
    """Fail in a second, before any backend starts, when the listen address cannot be bound (with port 0 too:
    the address may not be this machine's); under `json_logs` as one JSON error record."""

    def cannot_listen(code: int, reason: str, setting: str) -> NoReturn:
        plain = f"cannot listen on {host}:{port}: {reason}"
        markup = f"[bold red]cannot listen[/] on {host}:{port}: {reason}"
        fatal(code, markup, plain, json_logs, host=host, port=port, setting=setting)

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        cannot_listen(1, f"{exc.strerror} (server.host)", "server.host")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a socket in TIME_WAIT is no clash. Not on Windows, where the flag would let this
        # probe bind over a live listener and miss the clash.
        if sys.platform != "win32":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # the address, not the port: a config error
                cannot_listen(
                    2,
                    f"{host} is not an address of this machine; "
                    "choose one of its own with --host (server.host), or 0.0.0.0 for every interface",
                    "server.host",
                )
            reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            cannot_listen(1, f"{reason}; stop what holds it or choose another with --port (server.port)", "server.port")


def exit_if_no_stdio(json_logs: bool = False) -> None:
    """Under the stdio transport, fail at once when stdin or stdout is closed (`vmcp serve --stdio <&-`): the
    MCP stream has nowhere to come from or go to, and the event loop would stop on the missing descriptor with
    a traceback. Python leaves `sys.stdin`/`sys.stdout` None when their descriptor was not open at start."""
    closed = [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)) if stream is None]
    if closed:
        reason = (
            f"{' and '.join(closed)} {'is' if len(closed) == 1 else 'are'} closed; the stdio transport speaks MCP "
            "over stdin and stdout, so its client must start it with both open (or serve HTTP: no --stdio, "
            "server.transport: streamable-http)"
        )
        fatal(2, f"[bold red]cannot serve over stdio[/]: {reason}", f"cannot serve over stdio: {reason}", json_logs)


def stdio_launch(config_path: Path | None, flags: Sequence[str] = ()) -> dict[str, object]:
    """How a desktop client starts this gateway over stdio, on the config in use (not the bundled demo) with
    the `flags` this start was given (`carried_flags`): the `vmcp` script beside the interpreter, where a
    virtualenv or pipx puts it; else (`pip install --user`, a system Python, whose scripts go elsewhere) the
    interpreter itself, which always finds its own package."""
    config = ["-c", str(config_path.resolve())] if config_path is not None else []
    args = ["serve", "--stdio", *config, *flags]
    script = Path(sys.executable).parent / "vmcp"
    if script.exists() or script.with_suffix(".exe").exists():
        return {"command": str(script), "args": args}
    return {"command": sys.executable, "args": ["-m", "vmcp_opt", *args]}


def carried_flags(cfg: VmcpConfig, argv: Sequence[str]) -> list[str]:
    """The flags among `argv` (this `vmcp serve`'s) that change what a stdio start does, with the values in
    effect: the snippet of a gateway started with `--no-optimizer` started one with the optimizer on.
    `--host`, `--port` and `--allow-host` are HTTP's, and `-c` is `stdio_launch`'s own."""
    given = {arg.split("=", 1)[0] for arg in argv}
    flags = []
    if given & {"--optimizer", "--no-optimizer"}:
        flags.append("--optimizer" if cfg.optimizer.enabled else "--no-optimizer")
    if "--log-level" in given:
        flags += ["--log-level", cfg.server.log_level]
    if "--log-format" in given:
        flags += ["--log-format", cfg.server.log_format]
    return flags


# Read by libraries rather than by the config: OpenTelemetry's exporter settings, and the CA bundle that TLS
# to HTTP backends and identity providers trusts.
_LIBRARY_VARIABLES = ("OTEL_", "SSL_CERT_")
# The MCP listener's address, which a stdio start reads but never uses (as `carried_flags` leaves out --host and
# --port): `VMCP_SERVER__PORT=9000 make serve` printed a snippet asking for it. Not `server.allowed_hosts`: a
# stdio start's `telemetry.metrics.listen` port checks Host against it.
_HTTP_ONLY_VARIABLES = frozenset({"VMCP_SERVER__HOST", "VMCP_SERVER__PORT"})


def environment_read(config_path: Path | None) -> list[str]:
    """The environment variables this start read that a desktop client would not pass on: the `${VAR}`s of
    the file's backends, the variables its `*_env` settings name, the `VMCP_` settings but the listener's, and
    the OTEL_* and SSL_CERT_* variables set now (names only: the banner never shows a value). A client starts a stdio server
    with a few variables of its own (PATH, HOME, …) and what its entry's `env` says, never its user's shell's,
    so the banner's snippet pasted as is would find them unset: not start, or start as another gateway."""
    from vmcp_opt.config.loading import DATA_DIR_REFERENCE, raw_config

    try:
        raw = raw_config(config_path or DEFAULT_CONFIG_PATH)
    except ConfigError:
        raw = {}
    # `${VMCP_DATA_DIR}` is filled in by the gateway itself, set or not; only a value set now must be passed on.
    names = [name for name in _references(raw.get("backends")) if name != DATA_DIR_REFERENCE]
    names += _named_by_env_settings(raw)
    names += [name for name in os.environ if _stdio_setting(name)]
    names += [name for name in os.environ if name.upper() == "VMCP_DATA_DIR"]
    names += [name for name in os.environ if name.upper().startswith(_LIBRARY_VARIABLES)]
    return list(dict.fromkeys(names))


def _stdio_setting(name: str) -> bool:
    """Whether `name` is a `VMCP_` setting that a stdio start uses (not one of the listener's)."""
    upper = name.upper()
    return upper.startswith("VMCP_") and "__" in upper and upper not in _HTTP_ONLY_VARIABLES


def _references(value: Any) -> list[str]:
    """Every `${VAR}` in the strings under `value`."""
    if isinstance(value, str):
        return ENV_REFERENCE.findall(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [name for child in children for name in _references(child)]


def _named_by_env_settings(value: Any) -> list[str]:
    """The values of `*_env` settings (`redis.password_env: REDIS_PASSWORD`): variables read by name."""
    if isinstance(value, list):
        return [name for child in value for name in _named_by_env_settings(child)]
    if not isinstance(value, dict):
        return []
    names = []
    for key, child in value.items():
        if str(key).endswith("_env") and isinstance(child, str) and child:
            names.append(child)
        else:
            names += _named_by_env_settings(child)
    return names


def reachable_host(host: str) -> str:
    """`server.host` as a URL on this machine reaches it: a wildcard bind answers on loopback (its own address
    would be refused by the Host check), an IPv6 address in brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# What a credential-checking gateway's banner suggests: the inspector's CLI sends no header (0.15), so a
# client that can, with the credential from the environment (never printed).
_INITIALIZE = (
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},'
    '"clientInfo":{"name":"curl","version":"1"}}}'
)


def try_it_line(cfg: VmcpConfig, url: str, inspector: str) -> str:
    """A command that shows the gateway answering: the inspector's CLI listing the tools, or, when callers must
    show a credential (which the inspector's CLI cannot send), curl initializing a session with
    `$VMCP_CREDENTIAL` (the variable `vmcp auth check` reads)."""
    if cfg.auth.incoming.mode == "anonymous":
        return f"{inspector} --cli {url} --transport http --method tools/list"
    return (
        f'curl -s {url} -H "Authorization: Bearer $VMCP_CREDENTIAL" -H "Content-Type: application/json" '
        f"-H \"Accept: application/json, text/event-stream\" -d '{_INITIALIZE}'"
    )


def announce(cfg: VmcpConfig, port: int, config_path: Path | None = None) -> None:
    """The banner, once listening: `port` is the bound one (with `--port 0`, the one the OS chose). Under
    `--log-format json` it is one log record (on stderr, like every other line), so that a log shipper reading
    the gateway's output gets nothing but JSON; otherwise the human banner on stdout."""
    base = f"http://{reachable_host(cfg.server.host)}:{port}"
    url = f"{base}{cfg.server.path}"
    mode = "optimizer on: tools/list shows find_tool and call_tool" if cfg.optimizer.enabled else "optimizer off"
    health, readiness = f"{base}/healthz", f"{base}/readyz"
    local = PROJECT_ROOT / "node_modules" / ".bin" / "mcp-inspector"
    inspector = str(local) if local.exists() else "npx @modelcontextprotocol/inspector@0.15.0"
    try_it = try_it_line(cfg, url, inspector)
    snippet = {"mcpServers": {"vmcp": stdio_launch(config_path, carried_flags(cfg, sys.argv[1:]))}}
    needed = environment_read(config_path)
    if cfg.server.log_format == "json":
        logger.info(
            "vmcp-opt serving MCP at %s (%s)",
            url,
            mode,
            extra={
                "url": url,
                "optimizer": cfg.optimizer.enabled,
                "health_url": health,
                "readiness_url": readiness,
                "try_it": try_it,
                "claude_desktop_config": snippet,
                "claude_desktop_env": needed,
            },
        )
        return
    try:
        out.print(f"\n[bold green]vmcp-opt[/] serving MCP at [bold]{url}[/] ({mode})")
        out.print(f"  health: {health}   readiness: {readiness}")
        out.print(f"  try it:  {try_it}", markup=False, highlight=False)
        out.print("  Claude Desktop (claude_desktop_config.json):")
        out.print("  " + json.dumps(snippet), markup=False, highlight=False)
        if needed:
            env = json.dumps(dict.fromkeys(needed, "..."))
            out.print(
                f"  it reads {', '.join(needed)} from the environment, which a desktop client does not pass on: "
                f'add "env": {env} beside "args"',
                markup=False,
                highlight=False,
            )
        out.print("  Ctrl-C stops the gateway and its backends.\n")
    except OSError as exc:
        _discard_stdout()
        logger.warning("start-up banner not written to stdout (%s); serving at %s", exc.strerror or exc, url)


def _discard_stdout() -> None:
    """Point stdout at the null device: what is left in its buffer, and Python's flush at exit, would fail again
    (a traceback at shutdown, or an exit status of 120)."""
    out.quiet = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no stdout at all, or one without a descriptor
        pass
    finally:
        os.close(devnull)
