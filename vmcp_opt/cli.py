"""The `vmcp` command: serve, validate, backends, workflow, index, eval.

Just past ~450 lines: each command is a short function whose work lives in its own module (cli_serve,
cli_validate, cli_config, auth_cli, workflows/cli, optimizer/index_cli); what is left is their options."""

# ruff: noqa: E402  (the imports below come after the Ctrl-C handler that covers their loading)
from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C in the moment this module's imports take (typer, rich): the exit code of an interrupt, not Python's
    traceback from deep inside some library's import. Typer's own handling (exit 130 too) takes over once a
    command runs (`_restore_interrupt`), the imports a command makes for itself included."""
    raise SystemExit(130)


# Only where Python's default stands: a background job's ignored SIGINT, or an embedding program's handler,
# are not ours to replace.
_QUIET_LOADING = (
    threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
)
if _QUIET_LOADING:
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from vmcp_opt import __version__, logs
from vmcp_opt.console import UNWRAPPED_WIDTH, OutputConsole, PlainFlagsGroup, literal

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text
    from typer._click import Command, Context, HelpFormatter

    from vmcp_opt.config import VmcpConfig

# The bundled demo's file name (config.DEFAULT_CONFIG_PATH's, a test checks), spelled here so that the help of
# `--config` does not load the config models (pydantic, jsonschema, the MCP SDK's types) for `vmcp --version`.
DEFAULT_CONFIG_NAME = "demo.yaml"


class LazyGroup(PlainFlagsGroup):
    """`vmcp` itself: the sub-apps of `LAZY` are imported when a command line names them, so `vmcp serve` does
    not load `vmcp eval`'s harness (1.7 MiB of the demo gateway's memory) and `vmcp --help` lists them from
    `LAZY_HELP` without loading any."""

    _listing = False  # True while `--help` lists the commands

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        return [*(name for name in super().list_commands(ctx) if name not in LAZY), *LAZY]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY:
            if self._listing:  # a name and a line of help, all the listing reads
                return TyperGroup(name=cmd_name, help=LAZY_HELP[cmd_name])
            command = LAZY[cmd_name]()
            if command is None:
                return None  # its dependencies are not installed
            self.commands[cmd_name] = command
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in LAZY:
            for name in LAZY:  # an unknown name: mounted, they are among the suggestions of a typo
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="vmcp",
    cls=LazyGroup,
    help="vmcp-opt: one MCP endpoint in front of many MCP servers, with semantic tool discovery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = OutputConsole(stderr=True)
out = OutputConsole()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help=f"Config file (YAML or JSON). Default: the bundled demo ({DEFAULT_CONFIG_NAME})."
    ),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"vmcp-opt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """vmcp-opt: one MCP endpoint in front of many MCP servers."""


def setup_logging(level: str = "info", log_format: logs.LogFormat = "auto") -> None:
    logs.configure(level, log_format)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None,
        typer.Option(help="Listen address (server.host); its Host header is accepted too. 0.0.0.0: every interface."),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="<host>",
            help="Also accept this Host header (a name or address, any port), e.g. the name clients use; "
            "repeatable, added to server.allowed_hosts.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (server.port).")] = None,
    stdio: Annotated[bool, typer.Option("--stdio", help="Serve over stdin/stdout instead of HTTP.")] = False,
    optimizer: Annotated[
        bool | None,
        typer.Option(
            "--optimizer/--no-optimizer",
            help="Expose find_tool/call_tool instead of every tool (optimizer.enabled; on by default).",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (server.log_level).", show_default=False)
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="auto (rich on a terminal, plain otherwise), plain, or json: one object per line (server.log_format).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the gateway."""
    from vmcp_opt.cli_config import command_overrides, json_logs_requested, load_or_exit
    from vmcp_opt.cli_serve import announce, exit_if_no_stdio, exit_if_port_taken
    from vmcp_opt.server.malloc import cap_malloc_arenas

    cap_malloc_arenas()  # before any thread starts: the demo's RSS steady at ~250 MiB (server/malloc.py)
    overrides = command_overrides(
        server__host=host,
        server__port=port,
        optimizer__enabled=optimizer,
        server__log_level=log_level,
        server__log_format=log_format,
    )
    if stdio:
        overrides.setdefault("server", {})["transport"] = "stdio"
    # Asked for JSON, a log shipper must get JSON even when the config is too bad to say so itself.
    cfg = load_or_exit(config, overrides, json_logs=json_logs_requested(config, log_format))
    cfg.server.allowed_hosts = [*cfg.server.allowed_hosts, *(allow_host or [])]
    setup_logging(cfg.server.log_level, cfg.server.log_format)
    if cfg.server.transport == "streamable-http":
        exit_if_port_taken(cfg.server.host, cfg.server.port, json_logs=cfg.server.log_format == "json")
    else:
        exit_if_no_stdio(json_logs=cfg.server.log_format == "json")
    from vmcp_opt.server.runner import run_gateway

    sys.exit(run_gateway(cfg, announce=functools.partial(announce, config_path=config)))


@app.command()
def validate(
    config: ConfigOption = None,
    connect: Annotated[
        bool,
        typer.Option("--connect", help="Also connect to the backends and check that workflow steps name served tools."),
    ] = False,
) -> None:
    """Check a config file; print every bad field by its path and exit non-zero."""
    from vmcp_opt.cli_config import exit_invalid, load_or_exit
    from vmcp_opt.cli_validate import (
        check_connections,
        counted_names,
        empty_reference_warnings,
        exchange_warnings,
        launch_warnings,
        nothing_served_warnings,
        prefix_overlap_warnings,
        salvaged_launch_warnings,
        warnings_beside_errors,
    )

    with warnings_beside_errors(lambda: salvaged_launch_warnings(config)):
        cfg = load_or_exit(config)
    logs.release_held()  # what loading warned about (discovery's skipped entries), before the verdict
    from vmcp_opt.auth_cli import auth_problems
    from vmcp_opt.config.workflows import workflow_warnings
    from vmcp_opt.shared.secrets import secret_problems
    from vmcp_opt.shared.state_keys import unshared_key_warning

    problems = auth_problems(cfg) + secret_problems(cfg)
    if problems:
        with warnings_beside_errors(lambda: launch_warnings(cfg)):
            exit_invalid(config, problems)
    # Valid, but probably not what was meant. With --connect, each backend's own start says more.
    # token_exchange backends no caller could call: --connect's starts would not show it.
    warnings = [
        *nothing_served_warnings(cfg),
        *prefix_overlap_warnings(cfg),
        *empty_reference_warnings(config),
        *workflow_warnings(cfg.workflows),
        *exchange_warnings(cfg),
        *filter(None, [unshared_key_warning(cfg)]),
    ]
    for warning in [*warnings, *([] if connect else launch_warnings(cfg))]:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    if connect:
        check_connections(cfg)
    out.print(f"[green]valid[/]: {counted_names('backend', [b.name for b in cfg.backends])}")
    if cfg.workflows:
        out.print(f"  {counted_names('workflow', [w.name for w in cfg.workflows])}")


@app.command()
def backends(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Connect to each backend and print its state and tool/resource/prompt counts."""
    import anyio

    from vmcp_opt.cli_config import load_or_exit

    cfg = load_or_exit(config)
    setup_logging("warning")
    from vmcp_opt.probe import probe_backends

    summaries = anyio.run(probe_backends, cfg)
    if as_json:
        out.print_json(data=summaries)
    else:
        _print_backends(summaries)
    if any(s["state"] != "ready" for s in summaries):
        raise typer.Exit(1)


_HEALTH_COLOURS = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unauthenticated": "magenta",
    "unknown": "dim",
}


def _print_backends(summaries: list[dict[str, Any]]) -> None:
    """The table; in a terminal too narrow for it (80 columns with an error column), one block per backend
    instead: squeezed into the window the table cut every name, state and error to a few characters."""
    from rich.measure import Measurement

    table = _backends_table(summaries)
    natural = Measurement.get(out, out.options.update_width(UNWRAPPED_WIDTH), table).maximum
    if natural <= out.width:
        out.print(table)
        return
    for s in summaries:
        out.print(_backend_block(s))


def _backends_table(summaries: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="backends")
    columns = ("name", "transport", "state", "health", "ping", "protocol", "tools", "resources", "templates")
    for column in (*columns, "prompts", "error"):
        table.add_column(column)
    for s in summaries:
        health = s["health"]
        table.add_row(
            s["name"],
            s["transport"],
            f"[{_state_colour(s)}]{s['state']}[/]",
            f"[{_HEALTH_COLOURS.get(health['state'], 'dim')}]{health['state']}[/]",
            _ping(s),
            literal(s["protocol_version"] or "-"),  # as the backend announced it
            str(s["tools"]),
            str(s["resources"]),
            str(s["resource_templates"]),
            str(s["prompts"]),
            literal(_error(s)),  # a backend's stderr line, a URL
        )
    return table


def _backend_block(s: dict[str, Any]) -> Text:
    """One backend as a few soft-wrapped lines: name, state and health first, then the counts, then the error."""
    from rich.text import Text

    health = s["health"]
    block = Text.assemble(
        (s["name"], "bold"),
        ": ",
        (s["state"], _state_colour(s)),
        ", ",
        (health["state"], _HEALTH_COLOURS.get(health["state"], "dim")),
        f" ({s['transport']})\n  ping {_ping(s)}, protocol ",
        literal(s["protocol_version"] or "-"),
        f", {s['tools']} tools, {s['resources']} resources, {s['resource_templates']} templates, "
        f"{s['prompts']} prompts",
    )
    error = _error(s)
    if error:
        block.append("\n  error: ")
        block.append(literal(error))
    return block


def _state_colour(s: dict[str, Any]) -> str:
    return "green" if s["state"] == "ready" else "red"


def _ping(s: dict[str, Any]) -> str:
    latency = s["health"]["latency_ms"]
    return f"{latency:.1f} ms" if latency is not None else "-"


def _error(s: dict[str, Any]) -> str:
    return str(s["last_error"] or s["health"]["last_error"] or "")


@app.command("config-docs")
def config_docs(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when --output is not what would be written.")
    ] = False,
) -> None:
    """The configuration reference: every setting, its type, default, environment variable and description."""
    from vmcp_opt.config_docs import render
    from vmcp_opt.optimizer.file_lock import write_atomically

    text = render()
    if output is None and check:
        err.print("--check needs --output (the file to compare)")
        raise typer.Exit(2)
    try:
        if output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        elif check:
            try:
                current = output.read_text(encoding="utf-8") if output.is_file() else None
            except UnicodeDecodeError:  # not UTF-8: no output of this command, so stale like any other
                current = None
            if current != text:
                err.print(f"{output} is stale: run `vmcp config-docs --output {output}`", highlight=False)
                raise typer.Exit(1)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(output, text)
            out.print(f"wrote {output}", highlight=False)
    except OSError as exc:  # a directory, a full disk, no permission: one line, not a traceback
        err.print(f"config-docs: {output or 'stdout'}: {exc.strerror or exc}", highlight=False)
        raise typer.Exit(2) from None


models_app = typer.Typer(help="Embedding models: the ONNX export the optimizer's encoder runs.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("export")
def models_export(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: the bundled demo).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="A registry id or model directory (default: optimizer.model).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even when an export is cached.")] = False,
) -> None:
    """Export the optimizer's model to ONNX (torch runs in a child process) into optimizer.model_cache (data_dir's
    models when that cannot be written), once: an export already cached for the model's content is kept when its
    graphs load (one that does not is exported again). `vmcp serve` does this itself when needed."""
    from vmcp_opt.cli_config import load_or_exit
    from vmcp_opt.optimizer.model_registry import ModelError
    from vmcp_opt.optimizer.onnx_export import export_for

    settings = load_or_exit(config)
    setup_logging()  # the export's progress ("exporting … once") and what it removes, on stderr
    try:
        path, metadata = export_for(
            model or settings.optimizer.model,
            settings.model_cache_dir(),
            force=force,
            fallback=settings.data_dir_path() / "models",  # a read-only image's cache: the data directory's
        )
    except (ModelError, OSError) as exc:
        err.print(f"[red]export failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    cosines = metadata.get("min_cosine_to_torch", {})
    out.print(
        f"{path} (cosine to torch: fp32 {cosines.get('fp32', '?')}, int8 {cosines.get('int8', '?')})", highlight=False
    )


async def _collect_listing(config: VmcpConfig) -> Any:
    from vmcp_opt.probe import collect_listing  # the gateway's import cost, only when used

    return await collect_listing(config)


def _meta_tool_tokens(config: VmcpConfig) -> int:
    from vmcp_opt.probe import meta_tool_tokens

    return meta_tool_tokens(config)


def _workflow_command() -> Command:
    from vmcp_opt.workflows.cli import workflow_app

    return _sub_app(workflow_app, "workflow")


@functools.cache
def _auth_app_with_check() -> typer.Typer:
    """`vmcp auth` with its `check` command, which loads the config as the other commands do; once, however
    many times `app` runs in this process (each run mounts its sub-apps anew)."""
    from vmcp_opt.auth_cli import auth_app, check

    @auth_app.command("check")
    def auth_check(
        config: ConfigOption = None,
        credential_env: Annotated[
            str, typer.Option(help="The environment variable holding the token or API key (kept out of shell history).")
        ] = "VMCP_CREDENTIAL",
        local_user: Annotated[bool, typer.Option("--local-user", help="Check the local OS user (stdio).")] = False,
        host: Annotated[
            str | None, typer.Option(help="The host `serve` was given (server.host): part of a token's audience.")
        ] = None,
        port: Annotated[
            int | None, typer.Option(help="The port `serve` was given (server.port): part of a token's audience.")
        ] = None,
    ) -> None:
        """Who a token or API key is, and which tools it may list and call (connects to the backends once)."""
        from vmcp_opt.cli_config import command_overrides, load_or_exit

        setup_logging("warning")
        overrides = command_overrides(server__host=host, server__port=port)
        check(lambda: load_or_exit(config, overrides), credential_env, local_user)

    return auth_app


def _auth_command() -> Command:
    return _sub_app(_auth_app_with_check(), "auth")


def _index_command() -> Command | None:
    try:
        from vmcp_opt.optimizer.index_cli import hooks, index_app
    except ImportError:
        return None
    hooks.collect_listing = _collect_listing
    hooks.meta_tool_tokens = _meta_tool_tokens
    return _sub_app(index_app, "index")


def _eval_command() -> Command | None:
    try:
        from eval.cli import eval_app
    except ImportError:
        return None
    return _sub_app(eval_app, "eval")


def _import_command() -> Command:
    from vmcp_opt.importers.cli import import_app

    return _sub_app(import_app, "import")


def _sub_app(sub_app: typer.Typer, name: str) -> Command:
    """`sub_app` as `app.add_typer(sub_app, name=name, help=LAZY_HELP[name])` mounts it."""
    holder = typer.Typer(add_completion=False)
    holder.add_typer(sub_app, name=name, help=LAZY_HELP[name])
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    return group.commands[name]


# Sub-apps loaded when a command line names them, in the order `--help` lists them (after the commands above).
LAZY: dict[str, Callable[[], Command | None]] = {
    "workflow": _workflow_command,
    "auth": _auth_command,
    "index": _index_command,
    "eval": _eval_command,
    "import": _import_command,
}
# What `vmcp --help` says of each, without loading it.
LAZY_HELP = {
    "workflow": "List the configured workflows, or run one and see each step.",
    "auth": "API keys, and who a credential is and what it may do.",
    "index": "Build, inspect and query the optimizer's tool index.",
    "eval": "Retrieval benchmarks: the optimizer against its rivals.",
    "import": "Convert another gateway's config (ToolHive vMCP) to ours.",
}


def _restore_interrupt() -> None:
    if _QUIET_LOADING and signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_restore_interrupt()  # loaded: Ctrl-C is a KeyboardInterrupt again, which click and uvicorn handle
