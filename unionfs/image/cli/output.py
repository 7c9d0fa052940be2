"""What the CLI prints: docker-style tables, human sizes and ages, progress bars or lines.

tabulate lays out tables and rich draws progress bars; each is imported only when something is
drawn, so that quick commands (``images -q``) start fast.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import threading
from collections.abc import Sequence

from unionfs.image.progress import Progress

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(size: float) -> str:
    """Decimal units with three significant digits, as docker prints sizes (``4.26MB``)."""
    unit = 0
    while size >= 1000 and unit < len(_UNITS) - 1:
        size /= 1000
        unit += 1
    return f"{size:.3g}{_UNITS[unit]}"


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 time (nanoseconds allowed) as an aware datetime, or None."""
    if not text:
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?", text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return dt.datetime.fromisoformat(base.replace(" ", "T") + fraction + zone)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def since(text: str | None) -> str:
    when = parse_time(text)
    if when is None:
        return "N/A"
    age = (dt.datetime.now(dt.UTC) - when).total_seconds()
    return human_duration(max(age, 0)) + " ago"


def docker_time(text: str | None) -> str:
    when = parse_time(text)
    if when is None:
        return ""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A borderless table with docker's three-space gutters (tabulate lays it out: fast for
    thousands of rows, where rich takes half a second)."""
    import tabulate

    tabulate.MIN_PADDING = 0
    row = tabulate.DataRow("", "   ", "")
    layout = tabulate.TableFormat(lineabove=None, linebelowheader=None, linebetweenrows=None,
                                  linebelow=None, headerrow=row, datarow=row, padding=0,
                                  with_header_hide=None)
    text = tabulate.tabulate([list(r) for r in rows], headers=list(headers), tablefmt=layout,
                             disable_numparse=True, stralign="left")
    for line in text.splitlines() if rows else ["   ".join(headers)]:
        sys.stdout.write(line.rstrip() + "\n")


class CliProgress(Progress):
    """Bars (bytes and rate) per layer on a terminal, one quiet line per layer otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()
        self._bars = None
        self._tasks: dict[str, int] = {}
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
            from rich.progress import Progress as Bars

            self._bars = Bars(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), console=Console(stderr=True),
                              transient=False)
            self._bars.start()

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()

    def _line(self, text: str) -> None:
        if not self.quiet:
            with self._lock:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    def layer_started(self, diff_id: str, total: int | None) -> None:
        if self._bars is not None:
            with self._lock:
                self._tasks[diff_id] = self._bars.add_task(f"{diff_id[7:19]}: Loading",
                                                           total=total)

    def layer_advanced(self, diff_id: str, nbytes: int) -> None:
        if self._bars is not None and diff_id in self._tasks:
            self._bars.advance(self._tasks[diff_id], nbytes)  # type: ignore[arg-type]

    def layer_done(self, diff_id: str, status: str) -> None:
        if self._bars is not None:
            with self._lock:
                task = self._tasks.get(diff_id)
                if task is None:
                    self._tasks[diff_id] = self._bars.add_task(
                        f"{diff_id[7:19]}: {status}", total=1, completed=1)
                else:
                    self._bars.update(task, description=f"{diff_id[7:19]}: {status}")
            return
        self._line(f"{diff_id[7:19]}: {status}")
