"""Progress for long audits, on stderr: rich bars with rate and ETA on a
terminal, plain lines (at most one every few seconds per stage) otherwise,
so logs of scheduled audits stay readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, e.g. "31,204/s"."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")


class RichProgress:
    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("{task.description:>20}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None
        self._bars.start()

    def stage(self, name: str, total: int) -> None:
        self._finish_task()
        self._task = self._bars.add_task(name, total=total or None)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bars.advance(self._task, amount)

    def _finish_task(self) -> None:
        if self._task is not None:
            task = self._bars.tasks[self._task]
            if task.total is not None:
                self._bars.update(self._task, completed=task.total)

    def done(self) -> None:
        self._finish_task()
        self._bars.stop()


class LineProgress:
    """``<stage>: done/total (pct) rate/s, ETA`` every ``every_s`` seconds."""

    def __init__(self, out: TextIO, every_s: float = 5.0) -> None:
        self.out = out
        self.every_s = every_s
        self.name = ""
        self.total = 0
        self.count = 0
        self.started = self.last = time.monotonic()

    def stage(self, name: str, total: int) -> None:
        self.name, self.total, self.count = name, total, 0
        self.started = self.last = time.monotonic()

    def advance(self, amount: int) -> None:
        self.count += amount
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.count / elapsed
        left = f", ETA {(self.total - self.count) / rate:.0f} s" if rate and self.total > self.count else ""
        pct = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        print(f"{self.name}: {self.count:,}/{self.total:,}{pct} {rate:,.0f}/s{left}", file=self.out, flush=True)

    def done(self) -> None:
        pass


def for_stderr(enabled: bool = True) -> RichProgress | LineProgress | None:
    """Bars on a terminal, lines otherwise; None when progress is off."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        return RichProgress(Console(stderr=True))
    return LineProgress(sys.stderr)
