"""Terminal output of the `vmcp` command: wrapped to fit a person's window, never wrapped into a pipe or a file.

rich wraps at the window's width, and at 80 columns (or `$COLUMNS`) when there is no window: a path printed
into a log or a test's captured output would break across lines. `OutputConsole` soft-wraps text everywhere
(a long line stays one line; a terminal folds it on screen, and a copied path is whole) and, when it does not
write to a terminal, lays tables out at their natural width instead of the assumed 80 columns (or
`$COLUMNS`, which rich reads once, when the console is made).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions

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
