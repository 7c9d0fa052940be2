"""``pyunion attach``: a running detached container's output from now on (stdout and stderr
apart, as docker's ``attach``), until it exits, with its exit status; the signals ``attach``
gets are passed on to the container (``--sig-proxy``, on by default, as docker's).

The output comes from the container's log, which its detached monitor writes; stdin reaches
the container when it was started with ``-i`` (its monitor keeps a FIFO as the process's
stdin, ``containers/<id>/stdin``). A terminal (``-t``) container cannot be attached: its
terminal is the runtime's, held by no one once ``run -d`` returns.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time

from unionfs.image import events
from unionfs.image.container import logs, records, runtime, session
from unionfs.image.container.records import Container
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store

HELP = "Attach to a running container's output (and stdin, if it was started with -i)"
EPILOG = """examples:
  pyunion run -d --name web app:2.0 && pyunion attach web
  pyunion run -d -i --name cat app:2.0 cat && echo hi | pyunion attach cat
The exit status is the container's. Ctrl-C is passed on to it (--sig-proxy=false: not).
"""
PROXIED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)


def register(commands) -> None:
    p = commands.add_parser("attach", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument("--sig-proxy", default="true", nargs="?", const="true",
                   choices=("true", "false"), metavar="true|false",
                   help="pass the signals attach gets on to the container (default true)")
    p.set_defaults(run=run)


def stdin_fifo(store: Store, container: Container) -> str:
    return os.path.join(records.container_dir(store, container.id), session.STDIN_FIFO)


def _feed_stdin(path: str) -> None:
    """Copies our stdin into the container's FIFO, in a thread, until our stdin ends (the
    container's stays open, as docker's does without --stdin-once)."""
    def copy() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.set_blocking(fd, True)
            while data := os.read(sys.stdin.fileno(), 65536):
                os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)

    threading.Thread(target=copy, daemon=True).start()


def _proxy_signals(store: Store, container: Container) -> None:
    def forward(signum, _frame) -> None:
        runtime.send_signal(store, container, signum)

    for signum in PROXIED:
        signal.signal(signum, forward)


def run(args, store: Store) -> int:
    container = session.refresh(store, records.get(store, args.container))
    if container.state != "running":
        raise Conflict(f"you cannot attach to a stopped container, start it first "
                       f"({container.name})")
    if container.spec.tty:
        raise ImageError(f"cannot attach to {container.name}: it has a terminal (-t), which "
                         "a detached container's runtime keeps to itself")
    if runtime.is_paused(store, container):
        raise Conflict(f"you cannot attach to a paused container, unpause it first "
                       f"({container.name})")
    path = logs.log_path(records.container_dir(store, container.id))
    fifo = stdin_fifo(store, container)
    if args.sig_proxy == "true":
        _proxy_signals(store, container)
    events.record_container(store, container, "attach")
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)  # its output from now on, as docker's attach
        if not args.no_stdin and container.spec.interactive and os.path.exists(fifo):
            _feed_stdin(fifo)  # only now: what it answers is after the end just found
        while True:
            _copy(f)
            current = session.refresh(store, records.get(store, container.id))
            if current.state != "running":
                _copy(f)  # what was written before it stopped
                return current.exit_code if current.exit_code is not None else 0
            time.sleep(0.05)


def _copy(f) -> None:
    for piece in logs.read_pieces(f):
        out = sys.stdout.buffer if piece.stream != "stderr" else sys.stderr.buffer
        with contextlib.suppress(BrokenPipeError):
            out.write(piece.text)
            out.flush()
