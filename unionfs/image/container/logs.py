"""A container's output log: every line of its stdout and stderr with the time it was written,
in the ``k8s-file`` form podman's conmon writes (``TIME STREAM F|P TEXT``): ``F`` ends a line,
``P`` is a piece of one still being written (so that ``logs -f`` shows a prompt at once).

The log is appended to by every run of the container (``run``, ``start``, ``start -a``,
``restart``); ``pyunion logs`` reads it (``--tail``, ``--since``, ``-t``, ``-f``).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

LOG_FILE = "output.log"
LEGACY_LOG_FILE = "container.log"  # raw output, as pyunion wrote it before timestamps


def log_path(directory: str) -> str:
    return os.path.join(directory, LOG_FILE)


def timestamp(when: float | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, as docker's ``logs -t`` prints it."""
    when = dt.datetime.now(dt.UTC).timestamp() if when is None else when
    seconds = int(when)
    nanos = int(round((when - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


class LogWriter:
    """Appends entries to the log; shared by the stdout and stderr relays (a lock keeps each
    entry whole)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def write(self, stream: str, data: bytes) -> None:
        if not data:
            return
        now = timestamp().encode()
        entries = []
        for line in data.splitlines(keepends=True):
            full = line.endswith(b"\n")
            text = line[:-1] if full else line
            entries.append(b"%s %s %s %s\n" % (now, stream.encode(), b"F" if full else b"P",
                                               text))
        with self._lock:
            os.write(self._fd, b"".join(entries))

    def close(self) -> None:
        os.close(self._fd)


def sink(writer: LogWriter, stream: str, tee: int | None) -> Callable[[bytes], None]:
    """What a relay hands its data to: the log, and ``tee`` (our stdout or stderr) if given;
    once ``tee`` fails (a closed terminal), only the log."""
    target = [tee]

    def write(data: bytes) -> None:
        writer.write(stream, data)
        rest = data
        while rest and target[0] is not None:
            try:
                rest = rest[os.write(target[0], rest):]
            except OSError:
                target[0] = None

    return write


def relay(source: int, write: Callable[[bytes], None]) -> threading.Thread:
    """Copies the pipe ``source`` (closed at its end) to ``write`` in a thread."""
    def copy() -> None:
        try:
            while chunk := os.read(source, 1 << 16):
                write(chunk)
        except OSError:
            pass
        finally:
            os.close(source)

    thread = threading.Thread(target=copy, name="container-stdout", daemon=True)
    thread.start()
    return thread


@dataclass
class Piece:
    """One entry: a whole line (``ends``) or a piece of one."""

    time: str      # as written (RFC 3339, UTC)
    stream: str    # stdout or stderr
    text: bytes    # with its newline if it ends the line
    ends: bool

    @property
    def epoch(self) -> float:
        return parse_time(self.time)


def parse_time(text: str) -> float:
    base, _, rest = text.partition(".")
    nanos = rest.rstrip("Z")
    when = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    return when.timestamp() + (int(nanos) / 10 ** len(nanos) if nanos else 0)


def read_pieces(f) -> Iterator[Piece]:
    """The entries readable from the binary file ``f`` now (an entry still being written is
    left for the next call)."""
    while raw := f.readline():
        if not raw.endswith(b"\n"):
            f.seek(-len(raw), os.SEEK_CUR)
            return
        parts = raw[:-1].split(b" ", 3)
        if len(parts) < 3:
            continue
        ends = parts[2] == b"F"
        text = (parts[3] if len(parts) == 4 else b"") + (b"\n" if ends else b"")
        yield Piece(parts[0].decode(), parts[1].decode(), text, ends)


def whole_lines(pieces: Iterator[Piece]) -> list[Piece]:
    """Pieces joined into the lines they make (per stream; a line has its first piece's
    time); a line left unended is last."""
    lines: list[Piece] = []
    open_lines: dict[str, Piece] = {}
    for piece in pieces:
        started = open_lines.pop(piece.stream, None)
        if started is None:
            started = Piece(piece.time, piece.stream, b"", False)
            lines.append(started)
        started.text += piece.text
        started.ends = piece.ends
        if not piece.ends:
            open_lines[piece.stream] = started
    return lines
