"""Progress bars: counts, rate and ETA on stderr, so stdout stays clean for piping.

On a terminal a rich bar; elsewhere (nohup, CI, a pipe, DVC's log) a plain line per bar at a
fixed interval, since a redrawn bar shows nothing there until the work is over."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text


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


# seconds between two plain progress lines (no terminal); STEAMGAN_PROGRESS_EVERY changes it
PLAIN_EVERY_S = 30.0


def plain_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("STEAMGAN_PROGRESS_EVERY", PLAIN_EVERY_S)))
    except ValueError:
        return PLAIN_EVERY_S


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _PlainTask:
    description: str
    total: int | None
    status: str = ""
    completed: int = 0
    started: float = field(default_factory=time.monotonic)
    # the count and time of the last line: the rate is the recent one, so that a resumed
    # run (its first advance jumps to the resume step) does not report a huge speed
    shown: tuple[int, float] = (0, 0.0)


class PlainProgress:
    """The part of rich's ``Progress`` that ``Advance`` uses, printing a plain line
    (count, percent, rate, elapsed, ETA, status) every ``every`` seconds and when a bar ends.
    Written here because rich has no periodic plain-text mode: without a terminal its live
    display prints only once, at the end."""

    def __init__(self, console: Console, every: float) -> None:
        self.console, self.every = console, every
        self._tasks: dict[int, _PlainTask] = {}  # by id, in the order they were added

    def add_task(self, description: str, total: int | None = None, **fields) -> int:
        task = _PlainTask(description.strip(), total, str(fields.get("status", "")))
        task.shown = (0, task.started)
        self._tasks[id(task)] = task
        return id(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, advance: float = 0, status: str | None = None) -> None:
        task = self._tasks[task_id]
        task.completed += int(advance)
        if status is not None:
            task.status = status
        if time.monotonic() - task.shown[1] >= self.every:
            self._line(task)

    def remove_task(self, task_id: int) -> None:
        task = self._tasks.pop(task_id)
        self._line(task, done=True)

    def close(self) -> None:
        for task_id in list(self._tasks):
            self.remove_task(task_id)

    def _line(self, task: _PlainTask, done: bool = False) -> None:
        now = time.monotonic()
        count, since = task.shown
        recent = (task.completed - count) / (now - since) if now > since else 0.0
        parts = [f"{task.completed:,}" + (f"/{task.total:,}" if task.total else "")]
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.1f}%)"
        if recent > 0:
            parts.append(f"{recent:,.1f}/s")
        parts.append(f"elapsed {_clock(now - task.started)}")
        if done:
            parts.append("done")
        elif task.total and recent > 0:
            parts.append(f"eta {_clock((task.total - task.completed) / recent)}")
        if task.status:
            parts.append(task.status)
        line = f"{task.description}: {' · '.join(parts)}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        task.shown = (task.completed, now)


class Advance:
    """Moves one rich task: ``advance(n=1, status=None)`` (a status text optional), and
    ``advance.part(description, total)`` opens a bar of its own under it, with its own ETA,
    for a long part of the work (each of its steps moves both bars). Without a bar (the
    default): does nothing, so library code can take one unconditionally."""

    def __init__(
        self,
        bar: Progress | PlainProgress | None = None,
        task: TaskID | None = None,
        parent: Advance | None = None,
    ) -> None:
        self.bar, self.task, self.parent = bar, task, parent

    def __call__(self, n: int = 1, status: str | None = None) -> None:
        if self.bar is not None and self.task is not None:
            if status is None:
                self.bar.advance(self.task, n)
            else:
                self.bar.update(self.task, advance=n, status=status)
        if self.parent is not None:
            self.parent(n)

    @contextlib.contextmanager
    def part(self, description: str, total: int) -> Iterator[Advance]:
        if self.bar is None:
            yield Advance(parent=self)
            return
        task = self.bar.add_task(f"  {description}", total=total, status="")
        try:
            yield Advance(self.bar, task, parent=self)
        finally:
            self.bar.remove_task(task)


class _Forward(Advance):
    """An Advance that hands every call to a plain ``advance(n, status)`` function."""

    def __init__(self, function: Callable[..., None]) -> None:
        super().__init__()
        self.function = function

    def __call__(self, n: int = 1, status: str | None = None) -> None:
        self.function(n, status=status)


def as_advance(advance: Callable[..., None]) -> Advance:
    """``advance`` as an Advance (with ``part``), whatever callable the caller passed."""
    return advance if isinstance(advance, Advance) else _Forward(advance)


@contextlib.contextmanager
def progress_bar(
    total: int | None, description: str, console: Console | None = None
) -> Iterator[Advance]:
    """Yield an ``Advance``: ``advance(n=1, status=None)`` moves the bar and optionally sets
    a status text; ``advance.part(...)`` adds a bar for one long part. Without a terminal
    the bar is a plain line every ``STEAMGAN_PROGRESS_EVERY`` seconds (30) and at the end."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        plain = PlainProgress(console, plain_interval())
        try:
            yield Advance(plain, plain.add_task(description, total=total, status=""))
        finally:
            plain.close()
        return
    with Progress(*progress_columns(console.width), console=console) as bar:
        yield Advance(bar, bar.add_task(description, total=total, status=""))
