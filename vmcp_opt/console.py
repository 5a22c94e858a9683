"""Terminal output of the `vmcp` command: wrapped to fit a person's window, never wrapped into a pipe or a file.

rich wraps at the window's width, and at 80 columns (or `$COLUMNS`) when there is no window: a path printed
into a log or a test's captured output would break across lines. `OutputConsole` soft-wraps text everywhere
(a long line stays one line; a terminal folds it on screen, and a copied path is whole) and, when it does not
write to a terminal, lays tables out at their natural width instead of the assumed 80 columns (or
`$COLUMNS`, which rich reads once, when the console is made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleDimensions
from rich.text import Text
from typer.core import TyperGroup, TyperOption

from vmcp_opt.display import printable

if TYPE_CHECKING:
    from typer._click import Command, Context, Parameter

# Columns assumed when the output is not a terminal: wider than any line we print, so nothing wraps.
UNWRAPPED_WIDTH = 100_000


class OutputConsole(Console):
    """A rich `Console` whose lines never wrap unless a person is reading them in a terminal window."""

    def __init__(self, **options: Any) -> None:
        super().__init__(soft_wrap=True, **options)

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        assert isinstance(size, ConsoleDimensions)
        if self.is_terminal:
            return size
        return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def literal(text: str) -> Text:
    """Text a backend or a credential supplied (an error, a tool name, a subject), for a table cell or title: rich
    markup not applied (`[/etc/x]` in a backend's stderr line would end the command with a MarkupError, `[bold]`
    would vanish from the message), control characters escaped (an escape sequence would rewrite the terminal)."""
    return Text(printable(text))


def plain_flags(params: list[Parameter]) -> list[Parameter]:
    """typer's rich help prints a type beside every option, `<bool>` beside a flag too (`--help <bool>`),
    though a flag takes no value and its plain help shows none: a flag gets an empty metavar, so nothing."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class PlainFlagsGroup(TyperGroup):
    """A group whose help, and the help of every command and group under it, shows no type beside a flag
    (`plain_flags`): commands are fixed as they are looked up, so sub-apps mounted lazily or from another
    module (`vmcp index`, `vmcp auth check`) are too."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return plain_flags(super().get_params(ctx))

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_flags_throughout(command, ctx)
        return command


def _plain_flags_throughout(command: Command, ctx: Context) -> None:
    plain_flags(command.get_params(ctx))
    for sub in getattr(command, "commands", {}).values():
        _plain_flags_throughout(sub, ctx)
