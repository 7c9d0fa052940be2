"""``pyunion stop``, ``wait`` and ``logs``: following a detached container."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time

from unionfs.image.cli.output import parse_time
from unionfs.image.container import logs, records
from unionfs.image.container.session import Session, refresh
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

STOP_HELP = "Stop running containers (SIGTERM, then SIGKILL after a grace period)"
WAIT_HELP = "Block until containers stop, then print their exit codes"
LOGS_HELP = "Fetch the output of a container (every run of it but an interactive -t one)"
LOGS_EPILOG = """examples:
  pyunion logs web
  pyunion logs -f --tail 10 web         the last 10 lines, then what comes
  pyunion logs -t --since 5m web        with times, the last five minutes
Its stdout goes to stdout and its stderr to stderr."""


def register(commands) -> None:
    p = commands.add_parser("stop", help=STOP_HELP, description=STOP_HELP,
                            epilog="example:\n  pyunion stop -t 5 web")
    p.add_argument("-t", "--time", type=float, default=10.0,
                   help="seconds to wait before killing (default 10)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(run=run_stop)
    w = commands.add_parser("wait", help=WAIT_HELP, description=WAIT_HELP)
    w.add_argument("containers", nargs="+", metavar="CONTAINER")
    w.set_defaults(run=run_wait)
    lg = commands.add_parser("logs", help=LOGS_HELP, description=LOGS_HELP, epilog=LOGS_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    lg.add_argument("-f", "--follow", action="store_true", help="follow until it exits")
    lg.add_argument("-n", "--tail", type=_count, metavar="N",
                    help="only the last N lines (all: every line)")
    lg.add_argument("-t", "--timestamps", action="store_true",
                    help="show each line's time (RFC 3339, UTC)")
    lg.add_argument("--since", metavar="TIME",
                    help="lines since TIME: a Unix time, RFC 3339, or a duration (10m)")
    lg.add_argument("--until", metavar="TIME", help="lines before TIME (as --since)")
    lg.add_argument("container", metavar="CONTAINER")
    lg.set_defaults(run=run_logs)


def _count(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid line count {text!r}: a number, or all")
    return int(text)


def run_stop(args, store: Store) -> int:
    for text in args.containers:
        Session(store, refresh(store, records.get(store, text))).stop(args.time)
        print(text)
    return 0


def run_wait(args, store: Store) -> int:
    for text in args.containers:
        print(Session(store, records.get(store, text)).wait())
    return 0


def run_logs(args, store: Store) -> int:
    container = records.get(store, args.container)
    directory = records.container_dir(store, container.id)
    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until) if args.until else None
    path = logs.log_path(directory)
    if not os.path.exists(path):
        return _legacy_log(os.path.join(directory, logs.LEGACY_LOG_FILE), args.follow)
    with open(path, "rb") as f:
        lines = [line for line in logs.whole_lines(logs.read_pieces(f))
                 if _wanted(line, since, until)]
        if args.tail is not None:
            lines = lines[len(lines) - args.tail:] if args.tail < len(lines) else lines
        at_start = {"stdout": True, "stderr": True}
        for line in lines:
            _show(line, args.timestamps, at_start)
        if not args.follow:
            return 0
        while True:
            for piece in logs.read_pieces(f):
                if _wanted(piece, since, until):
                    _show(piece, args.timestamps, at_start)
            if refresh(store, records.get(store, container.id)).state != "running":
                for piece in logs.read_pieces(f):  # what was written before it stopped
                    if _wanted(piece, since, until):
                        _show(piece, args.timestamps, at_start)
                return 0
            time.sleep(0.1)


def _wanted(piece: logs.Piece, since: float | None, until: float | None) -> bool:
    if since is None and until is None:
        return True
    epoch = piece.epoch
    return (since is None or epoch >= since) and (until is None or epoch <= until)


def _show(piece: logs.Piece, timestamps: bool, at_start: dict[str, bool]) -> None:
    """Writes a line or piece to our stdout or stderr (the stream it came from)."""
    out = sys.stdout.buffer if piece.stream != "stderr" else sys.stderr.buffer
    data = piece.text
    if timestamps and at_start.get(piece.stream, True):
        data = piece.time.encode() + b" " + data
    at_start[piece.stream] = data.endswith(b"\n")
    out.write(data)
    out.flush()


def parse_since(text: str) -> float:
    """docker's ``--since``/``--until``: a Unix time (``1700000000[.5]``), an RFC 3339 time
    or date, or a duration before now (``10m``, ``1h30m``, ``45s``)."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+", text):
        units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(n) * units[u]
                      for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|ms|s|m|h)", text))
        return time.time() - seconds
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", text):
        return logs.parse_time(text)  # as the log's times are read: to the nanosecond
    when = parse_time(text)
    if when is None:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ImageError(f"invalid time {text!r}: a Unix time, an RFC 3339 time or a "
                             "duration such as 10m") from None
        if when.tzinfo is None:
            when = when.astimezone()
    return when.timestamp()


def _legacy_log(path: str, follow: bool) -> int:
    """A log without timestamps, from an older pyunion: printed as it is."""
    try:
        with open(path, "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        pass
    return 0
