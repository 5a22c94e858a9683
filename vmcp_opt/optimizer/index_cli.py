"""`vmcp index build | stats | search | usage | list | prune`: the persisted tool index, for operators and for
tuning descriptions, the history of tools used together that the gateway learns (`usage`), and the index
directories of every config under the data directory (`list`, `prune`: their work is optimizer/index_dirs.py's).

The tool list comes from the catalogue the gateway last saved beside the index (optimizer/listing.py), so
`stats` and `search` start no backend when there is one; from the live backends when there is none, with
`--refresh`, and always for `build` (through `hooks.collect_listing`, which the `vmcp` command plugs in: saved
only when every backend connected); or from `--from-jsonl`, one tool record per line
(`name`, `backend`, `description`, `input_schema`, optional `title`, `backend_description`, `original_name`).

Past ~450 lines: the first four commands share how a tool list is found and saved (above) and how the index is
opened; `usage` is the one that could go, and would take those helpers with it. `list` and `prune` only print
what index_dirs.py finds and does, and share `_human` and `literal` with the others.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import typer
from rich.table import Table
from rich.text import Text

from vmcp_opt.config import APP_NAME, ConfigError, VmcpConfig, load_config
from vmcp_opt.console import OutputConsole
from vmcp_opt.display import printable
from vmcp_opt.optimizer.index_dirs import (
    INDEXES,
    IndexDir,
    list_index_dirs,
    prune_reason,
    remove_leftovers,
    remove_unless_in_use,
)
from vmcp_opt.optimizer.jsonl_records import read_jsonl, record_tool
from vmcp_opt.optimizer.listing import Listing, catalogue_key, load_listing, save_listing
from vmcp_opt.optimizer.model_registry import ModelError, model_problem
from vmcp_opt.optimizer.tokens import saving, tools_list_tokens
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import FileUsageHistory
from vmcp_opt.optimizer.vector_store import VECTORS_FILE

P = ParamSpec("P")
index_app = typer.Typer(help="Build, inspect and query the optimizer's persisted tool index.", no_args_is_help=True)
console = OutputConsole()
errors = OutputConsole(stderr=True)


@dataclass
class Hooks:
    """What the gateway plugs in: where live tool records come from, and what the meta-tools cost."""

    collect_listing: Callable[[VmcpConfig], Coroutine[Any, Any, Listing]] | None = None
    # Tokens of the tools/list answer with the optimizer on (meta-tools and pinned tools), for a model id.
    meta_tool_tokens: Callable[[VmcpConfig], int] | None = None


hooks = Hooks()

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Config file (default: the bundled demo).")]
JsonlOption = Annotated[
    Path | None, typer.Option("--from-jsonl", help="Read tool records from a JSON-lines file instead of the backends.")
]
IndexDirOption = Annotated[Path | None, typer.Option("--index-dir", help="Override optimizer.index_dir.")]
RefreshOption = Annotated[
    bool, typer.Option("--refresh", help="Ask the backends for their tools instead of reading the saved catalogue.")
]


def _exit_on_model_error(command: Callable[P, None]) -> Callable[P, None]:
    """A model that does not load ends the command with its reason, not a traceback: `_config` checks that
    `optimizer.model` resolves, but a local model directory can still lack its weights."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except ModelError as exc:
            errors.print(f"optimizer.model: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None

    return run


@index_app.command()
@_exit_on_model_error
def build(config: ConfigOption = None, from_jsonl: JsonlOption = None, index_dir: IndexDirOption = None) -> None:
    """Embed every tool not already in the persisted index (a progress bar while it works)."""
    from vmcp_opt.optimizer.index import ToolIndex

    settings = _config(config)
    directory = _index_dir(settings, index_dir)
    listing = _listing(settings, from_jsonl, directory, refresh=True)
    if from_jsonl is None and settings.backends and len(_silent_backends(settings, listing)) == len(settings.backends):
        # `_listing` named them; "0 tools indexed" and exit 0 read as a build that worked (a script goes on).
        errors.print("[red]no backend listed any tools:[/] nothing indexed", highlight=False)
        raise typer.Exit(1)
    index = ToolIndex(settings.optimizer, directory, model_cache=settings.model_cache_dir())
    _exit_unless_writable(index.directory)  # before embedding: a build is for the index it saves
    stats = index.update(listing.records, progress=True)
    # What the save said, not whether a file is there: a full disk leaves the previous, stale file in place.
    unsaved = index.vectors_unsaved
    if stats.total and (unsaved is not None or not (index.directory / VECTORS_FILE).is_file()):
        errors.print(
            f"[red]index not saved[/] to {index.directory}: {literal(unsaved or 'no vectors file written')}",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"[bold]{stats.total}[/] tools indexed in {stats.seconds:.1f} s: embedded {stats.embedded}, "
        f"reused {stats.reused}, removed {stats.removed} → {index.directory}"
    )


def _optimizer_state(settings: VmcpConfig) -> str:
    """Whether this config's gateway serves the meta-tools: the index is kept for when it does."""
    if settings.optimizer.enabled:
        return "on (tools/list shows find_tool and call_tool)"
    return "off in this config (optimizer.enabled: false): `vmcp serve` lists every tool; --optimizer turns it on"


def _exit_unless_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        errors.print(f"[red]cannot write the index[/] to {directory}: {reason} (--index-dir)", highlight=False)
        raise typer.Exit(2) from None


@index_app.command()
@_exit_on_model_error
def stats(
    config: ConfigOption = None,
    from_jsonl: JsonlOption = None,
    index_dir: IndexDirOption = None,
    refresh: RefreshOption = False,
) -> None:
    """Tools, backends, model, size on disk, and the tokens of the full tool list against the meta-tools."""
    from vmcp_opt.optimizer.index import ToolIndex

    settings = _config(config)
    directory = _index_dir(settings, index_dir)
    listing = _listing(settings, from_jsonl, directory, refresh=refresh)
    index = ToolIndex(settings.optimizer, directory, model_cache=settings.model_cache_dir())
    index.update_keywords(listing.records)  # no model needed: reads the persisted vectors only
    info = index.stats()
    full = listing.tools_list_tokens
    meta = _meta_tool_tokens(settings)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("optimizer", _optimizer_state(settings))
    table.add_row("tools", str(info["tools"]))
    table.add_row("backends", literal(f"{info['backends']} ({', '.join(info['backend_names'])})"))
    table.add_row("model", f"{info['model']} ({info['dimensions']} dimensions)")
    first_pass = ", int8 first pass" if info["int8_first_pass"] else ""
    missing = info["tools"] - info["with_vectors"]
    # What a start or a build still has to embed: the part of the index find_tool finds by keywords only.
    pending = f" ({missing} not embedded yet: by a running gateway, or `vmcp index build`)" if missing else ""
    table.add_row(
        "index", f"{info['index_type']}{first_pass}, {info['with_vectors']}/{info['tools']} tools with vectors{pending}"
    )
    table.add_row("size on disk", f"{_human(info['size_on_disk_bytes'])} ({info['path']})")
    table.add_row("tools/list, full", f"{full:,} tokens")
    if meta is not None:
        table.add_row("tools/list, optimizer on", f"{meta:,} tokens {saving(full, meta)}".rstrip())
    console.print(table)


@index_app.command()
@_exit_on_model_error
def search(
    query: Annotated[str, typer.Argument(help="A natural-language need, as an agent would ask.")],
    config: ConfigOption = None,
    from_jsonl: JsonlOption = None,
    index_dir: IndexDirOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=50, help="How many tools to show.")] = 8,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", metavar="<backend>", help="Only these backends; repeat.")
    ] = None,
    keyword: Annotated[bool, typer.Option("--keyword", help="Keywords only, without loading the model.")] = False,
    refresh: RefreshOption = False,
) -> None:
    """Rank the tools for QUERY the way find_tool does.

    score: find_tool's score (0..1, how well the tool matches); fused: the ranking value the order follows.
    """
    from vmcp_opt.optimizer.calibration import scale_for
    from vmcp_opt.optimizer.index import ToolIndex
    from vmcp_opt.optimizer.meta_tool_forms import query_problem

    problem = query_problem(query)  # find_tool's rules, before any listing or model is loaded
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="'QUERY'")
    settings = _config(config)
    directory = _index_dir(settings, index_dir)
    records = _listing(settings, from_jsonl, directory, refresh=refresh).records
    known = sorted({record.backend for record in records})
    absent = [name for name in dict.fromkeys(backend or ()) if name not in known]
    if absent:
        configured = {b.name for b in settings.backends}
        problems = [
            f"backend '{name}' is configured but has no tools in this catalogue"
            for name in absent
            if name in configured
        ]
        unknown = [name for name in absent if name not in configured]
        if unknown:
            problems.append(f"unknown backend(s) {unknown}")
        raise typer.BadParameter(f"{'; '.join(problems)}; known: {known}", param_hint="'--backend' / '-b'")
    index = ToolIndex(
        settings.optimizer, directory, usage=_usage_history(settings, directory), model_cache=settings.model_cache_dir()
    )
    if keyword:
        index.update_keywords(records)
    else:
        index.update(records, progress=True)
    result = index.search(query, limit=limit, backends=backend or None)
    scale = scale_for(index.model.id)
    table = Table(title=literal(f"{query!r} ({result.mode})"))
    table.add_column("rank", justify="right", no_wrap=True, min_width=4)
    # Names and backends are what people copy: never cut them; the description gives way.
    table.add_column(
        "name", style="bold", no_wrap=True, min_width=max((len(h.record.name) for h in result.hits), default=4)
    )
    table.add_column("backend", no_wrap=True, min_width=max([7, *(len(h.record.backend) for h in result.hits)]))
    table.add_column("score", justify="right", no_wrap=True, min_width=6)
    table.add_column("fused", justify="right", no_wrap=True, min_width=5)
    table.add_column("description", overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        summary = hit.record.description.strip().split("\n")[0][:200]
        if hit.used_with:
            summary += f" (used with {hit.used_with})"
        if hit.supplies:
            summary += f" (supplies {hit.supplies[1]} for {hit.supplies[0]})"
        # find_tool's `score` (metatools `_shown`): the match score, or the ranking's own without a vector.
        score = hit.score if scale is None or hit.similarity is None else scale(hit.similarity)
        name, backend_name = literal(hit.record.name), literal(hit.record.backend)
        table.add_row(str(rank), name, backend_name, f"{score:.4f}", f"{hit.score:.3f}", literal(summary))
    console.print(table)


@index_app.command()
def usage(
    config: ConfigOption = None,
    index_dir: IndexDirOption = None,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="How many pairs to show.")] = 10,
    clear: Annotated[
        bool,
        typer.Option("--clear", help="Delete the history (index_dir/usage.json); running gateways drop theirs too."),
    ] = False,
) -> None:
    """The tools clients used together (what find_tool learns from): counts and the most frequent pairs."""
    from vmcp_opt.optimizer.metatools import USAGE_FILE

    settings = _config(config)
    if settings.optimizer.usage_store == "redis":
        _shared_usage(settings, top, clear)
        return
    path = _index_dir(settings, index_dir) / USAGE_FILE
    if clear:
        _clear_file_history(path, settings.optimizer.usage_sync_interval)
        return
    if not settings.optimizer.usage:  # "no usage history yet" would promise one that never comes
        left = f"; {path} is left from when it was on (--clear deletes it)" if path.exists() else ""
        console.print(f"optimizer.usage is off: the gateway keeps no usage history{left}", highlight=False)
        return
    if not path.exists():
        console.print(f"no usage history yet at {path} (the gateway writes it once clients have called tools)")
        return
    try:
        # Read only: unlike the gateway's load, an unreadable file is reported and left where it is.
        graph = UsageGraph.read(path)
    except (OSError, ValueError) as exc:
        errors.print(f"[red]unreadable usage history[/] {path}: {exc}")
        raise typer.Exit(1) from None
    _print_usage(graph, str(path), top)


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="VMCP_DATA_DIR", help="The data directory (default: VMCP_DATA_DIR, else the per-user one)."
    ),
]


@index_app.command("list")
def list_dirs(data_dir: DataDirOption = None) -> None:
    """The index directories under <data_dir>/indexes/: config, size, last use, whether a gateway holds it.

    A directory from before owner files were written shows "unknown", and its newest file's time."""
    root = _data_dir(data_dir)
    found = list_index_dirs(root)
    if not found:
        console.print(literal(f"no index directories under {root / INDEXES}"))
        return
    table = Table(title=literal(str(root / INDEXES)))
    for column in ("name", "config", "config exists", "size", "last used", "gateway running"):
        table.add_column(column, no_wrap=column != "config", justify="right" if column == "size" else "left")
    for entry in found:
        exists = {True: "yes", False: "no", None: "-"}[entry.config_exists]
        running, size = ("yes" if entry.in_use else "no"), _human(entry.size)
        if entry.untouchable is not None:  # not looked into
            running = size = "-"
        table.add_row(literal(entry.path.name), _owner_text(entry), exists, size, entry.last_used_text(), running)
    console.print(table)
    held = sum(entry.in_use for entry in found)
    console.print(
        f"{len(found)} directories, {_human(sum(e.size for e in found))} on disk; {held} held by a gateway now"
    )


@index_app.command()
def prune(
    data_dir: DataDirOption = None,
    older_than: Annotated[
        int, typer.Option("--older-than", min=0, metavar="DAYS", help="Remove those unused for more days.")
    ] = 30,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
) -> None:
    """Remove the index directories whose config file is gone, or unused for more than DAYS.

    Never one a running gateway holds, nor anything outside <data_dir>/indexes/ (links are not followed)."""
    root = _data_dir(data_dir)
    found = list_index_dirs(root)
    reasons = [(entry, why) for entry in found if (why := prune_reason(entry, older_than)) is not None]
    for entry, why in reasons:
        if entry.in_use:
            console.print(literal(f"kept {entry.path.name} ({why}): a running gateway holds it"))
    doomed = [(entry, why) for entry, why in reasons if not entry.in_use]
    if not doomed:
        console.print(
            literal(f"nothing to prune under {root / INDEXES} (unused for over {older_than} days, or config gone)")
        )
        return
    total = _human(sum(entry.size for entry, _ in doomed))
    if dry_run or not yes:
        verb = "would remove" if dry_run else "to remove"
        for entry, why in doomed:
            console.print(literal(f"{verb} {entry.path.name} ({entry.owner_line()}; {why}): {_human(entry.size)}"))
    if dry_run:
        console.print(f"would free {total} in {len(doomed)} directories (--dry-run: nothing removed)")
        return
    if not yes:
        if not sys.stdin.isatty():
            errors.print(
                f"refusing to remove {len(doomed)} index directories without confirmation: no terminal to ask on; "
                "pass --yes to remove them, or --dry-run to only list them",
                markup=False,
                highlight=False,
            )
            raise typer.Exit(2)
        typer.confirm(f"remove these {len(doomed)} directories ({total})?", abort=True)
    _remove(root, doomed, older_than)


def _remove(root: Path, doomed: list[tuple[IndexDir, str]], older_than: int) -> None:
    freed, removed = remove_leftovers(root), 0
    for entry, why in doomed:
        kept = remove_unless_in_use(entry, older_than)
        if kept is None:
            console.print(literal(f"removed {entry.path.name} ({entry.owner_line()}; {why}): {_human(entry.size)}"))
            freed, removed = freed + entry.size, removed + 1
        else:
            console.print(literal(f"kept {entry.path.name}: {kept}"))
    console.print(f"freed {_human(freed)} in {removed} directories")


def _data_dir(given: Path | None) -> Path:
    """--data-dir (or VMCP_DATA_DIR, which typer reads for it), else the per-user data directory, as the config's
    `data_dir_path` has it."""
    import platformdirs

    chosen = given if given is not None else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    return chosen.expanduser().absolute()


def _owner_text(entry: IndexDir) -> Text:
    if entry.untouchable is not None:
        return literal(f"({entry.untouchable}: never pruned)")
    if entry.owner is None:
        return Text("unknown")
    return literal(entry.owner.config or "none (no config file)")


def _clear_file_history(path: Path, sync_interval: float) -> None:
    """Delete `path` and mark the clear, which running gateways on the directory notice at their next sync."""
    within = f"within optimizer.usage_sync_interval, {sync_interval:g} s"
    if not path.parent.is_dir():  # no gateway has written here: nothing it could hold either
        console.print(f"no usage history at {path}: nothing to clear")
        return
    try:
        existed = FileUsageHistory(path).clear()
    except OSError as exc:  # a read-only or foreign index_dir
        errors.print(f"cannot clear the usage history {path}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(1) from None
    if existed:
        console.print(
            f"deleted the usage history {path}; a running gateway notices ({within}), ranks without it and "
            "does not write it back"
        )
    else:  # a gateway may still hold what it learned and has not saved yet: the mark drops that too
        console.print(
            f"no usage history at {path}: nothing to clear on disk; a running gateway drops what it learned "
            f"and has not saved yet ({within})"
        )


def _shared_usage(settings: VmcpConfig, top: int, clear: bool) -> None:
    """`vmcp index usage` with `optimizer.usage_store: redis`: the replicas' one history in Redis."""
    from redis import RedisError

    from vmcp_opt.shared.factories import usage_history

    history = usage_history(settings)
    if history is None:
        console.print("optimizer.usage is off: the gateway keeps no usage history")
        return
    try:
        if clear:
            history.clear()
            console.print(f"deleted the usage history in {history.where}")
            return
        graph = history.read()
    except (RedisError, OSError, ValueError) as exc:
        errors.print(f"[red]usage history not read[/] from {history.where}: {exc}")
        raise typer.Exit(1) from None
    _print_usage(graph, history.where, top)


def literal(text: str) -> Text:
    """Backend-supplied text as written: rich markup not applied (`[/dir]` would end the command), control
    characters escaped (an ANSI or OSC sequence would rewrite the operator's terminal)."""
    return Text(printable(text))


def _print_usage(graph: UsageGraph, where: str, top: int) -> None:
    info = graph.stats()
    console.print(
        f"[bold]{info['tools']}[/] tools used, {info['tool_uses']} uses in tasks, {info['pairs']} pairs used "
        f"together ({where})"
    )
    pairs = _top_pairs(graph.to_json()["together"], top)
    if not pairs:
        return
    table = Table(title="tools used together")
    table.add_column("tool", style="bold", no_wrap=True)
    table.add_column("with", style="bold", no_wrap=True)
    table.add_column("tasks", justify="right")
    for first, second, count in pairs:
        table.add_row(literal(first), literal(second), str(count))
    console.print(table)


def _usage_history(settings: VmcpConfig, directory: Path) -> UsageGraph | None:
    """The gateway's co-usage history, read only, so `search` ranks as find_tool does; None without one."""
    from vmcp_opt.optimizer.metatools import USAGE_FILE

    path = directory / USAGE_FILE
    if settings.optimizer.usage_store == "redis" and settings.optimizer.usage:
        return _shared_usage_graph(settings)
    if not settings.optimizer.usage or not path.exists():
        return None
    try:
        return UsageGraph.read(path)
    except (OSError, ValueError) as exc:
        errors.print(f"[yellow]usage history {path} not read ({exc}); ranking without it[/]")
        return None


def _shared_usage_graph(settings: VmcpConfig) -> UsageGraph | None:
    from redis import RedisError

    from vmcp_opt.shared.factories import usage_history

    history = usage_history(settings)
    try:
        return history.read() if history is not None else None
    except (RedisError, OSError, ValueError) as exc:
        errors.print(f"[yellow]usage history not read from Redis ({exc}); ranking without it[/]")
        return None


def _top_pairs(together: dict[str, dict[str, int]], top: int) -> list[tuple[str, str, int]]:
    """Each unordered pair once, most tasks together first (ties by name)."""
    pairs = {
        (min(tool, other), max(tool, other)): count
        for tool, counts in together.items()
        for other, count in counts.items()
    }
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return [(first, second, count) for (first, second), count in ranked[:top]]


def _config(path: Path | None) -> VmcpConfig:
    from vmcp_opt.backends.discovery import read_client_config
    from vmcp_opt.cli_config import exit_invalid

    try:
        return load_config(path, discover=read_client_config, check_model=model_problem)
    except ConfigError as exc:  # as every other command says it (a problem quoting "[/x]" is not markup there)
        exit_invalid(path, exc.problems)


def _index_dir(settings: VmcpConfig, override: Path | None) -> Path:
    if override is not None and override.exists() and not override.is_dir():
        errors.print(f"--index-dir: {override} is a file, not a directory", markup=False, highlight=False)
        raise typer.Exit(2)
    return override if override is not None else settings.index_dir()


def _listing(settings: VmcpConfig, from_jsonl: Path | None, directory: Path, *, refresh: bool) -> Listing:
    """The tools to index: the JSON-lines file, else the saved catalogue (unless `refresh`), else the backends."""
    model = settings.optimizer.model
    if from_jsonl is not None:
        try:
            records = read_jsonl(from_jsonl)
        except ValueError as exc:
            errors.print(f"--from-jsonl: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        if not records:
            errors.print(f"--from-jsonl: {from_jsonl}: no tool records in it", markup=False, highlight=False)
            raise typer.Exit(2)
        return Listing(records, tools_list_tokens([record_tool(r) for r in records], model), model)
    key = catalogue_key(settings)
    if not refresh:
        saved = load_listing(directory, model, key)
        if saved is not None and saved.saved_at is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.saved_at))
            errors.print(
                f"tools as {saved.listed_by} last listed them ({when}); --refresh asks the backends", highlight=False
            )
            return saved
    collect = hooks.collect_listing
    if collect is None:
        # The gateway (vmcp_opt/cli.py) plugs the live source in; the optimizer does not import server/.
        errors.print("[red]no tool source:[/] pass --from-jsonl PATH, or run through the `vmcp` command")
        raise typer.Exit(2)
    with errors.status("listing tools from the backends"):
        listing = replace(asyncio.run(collect(settings)), config_key=key)
    if not listing.not_connected:  # a connected backend serving no tools misses none
        save_listing(directory, listing)
    else:  # saved, it would stand for the whole catalogue in every later `stats` and `search` until a --refresh
        why = f"(not connected): the saved tool list in {directory} was not updated"
        errors.print(literal(f"no tools from backend(s) {', '.join(listing.not_connected)} {why}"), highlight=False)
    return listing


def _silent_backends(settings: VmcpConfig, listing: Listing) -> list[str]:
    """The configured backends none of whose tools are in `listing`, in config order."""
    listed = {record.backend for record in listing.records}
    return [backend.name for backend in settings.backends if backend.name not in listed]


def _meta_tool_tokens(settings: VmcpConfig) -> int | None:
    if hooks.meta_tool_tokens is not None:
        return hooks.meta_tool_tokens(settings)
    return None


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
