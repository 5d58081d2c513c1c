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
from rich.text import Text

Advance = Callable[..., None]


class RateColumn(ProgressColumn):
    """Items per second (rich ships only a bytes-per-second column)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Advance]:
    """Yield ``advance(n=1, status=None)``: moves the bar and optionally sets a status text."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("[cyan]{task.fields[status]}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            if status is None:
                bar.advance(task, n)
            else:
                bar.update(task, advance=n, status=status)

        yield advance
