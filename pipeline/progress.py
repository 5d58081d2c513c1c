"""Progress bars: counts, rate and ETA on stderr, so stdout stays clean for piping."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

Advance = Callable[..., None]


class RateColumn(ProgressColumn):
    """Items per second (rich ships only a bytes-per-second column)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


def progress_columns(width: int = 80) -> tuple[ProgressColumn, ...]:
    """Description, bar, count, rate, elapsed, ETA and status, for a ``width``-column
    terminal. The numbers keep their width; the description and the status share what is
    left (at most, each, half of what the numbers and a short bar leave) and are cut with an
    ellipsis, so at 80 columns the count and the ETA stay visible (rich would otherwise
    squeeze every column, numbers included)."""
    numbers = 50  # count (up to 999999/999999), rate, elapsed, "eta", remaining, gaps, bar
    words = max(8, (width - numbers) // 2)

    def text(max_width: int) -> Column:
        return Column(no_wrap=True, overflow="ellipsis", max_width=max_width)

    return (
        TextColumn("[bold]{task.description}", table_column=text(words)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        RateColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("eta", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        TextColumn("[cyan]{task.fields[status]}", table_column=text(words)),
    )


@contextlib.contextmanager
def progress_bar(
    total: int | None, description: str, console: Console | None = None
) -> Iterator[Advance]:
    """Yield ``advance(n=1, status=None)``: moves the bar and optionally sets a status text."""
    console = console or Console(stderr=True)
    with Progress(*progress_columns(console.width), console=console) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            if status is None:
                bar.advance(task, n)
            else:
                bar.update(task, advance=n, status=status)

        yield advance
