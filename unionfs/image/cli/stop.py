"""``pyunion stop``, ``wait`` and ``logs``: following a detached container."""

from __future__ import annotations

import os
import sys
import time

from unionfs.image.container import records, runtime
from unionfs.image.store import Store

STOP_HELP = "Stop running containers (SIGTERM, then SIGKILL after a grace period)"
WAIT_HELP = "Block until containers stop, then print their exit codes"
LOGS_HELP = "Fetch the output of a detached container"


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
    lg = commands.add_parser("logs", help=LOGS_HELP, description=LOGS_HELP)
    lg.add_argument("-f", "--follow", action="store_true", help="follow until it exits")
    lg.add_argument("container", metavar="CONTAINER")
    lg.set_defaults(run=run_logs)


def run_stop(args, store: Store) -> int:
    for text in args.containers:
        runtime.stop(store, runtime.refresh(store, records.get(store, text)), args.time)
        print(text)
    return 0


def run_wait(args, store: Store) -> int:
    for text in args.containers:
        print(runtime.wait(store, records.get(store, text)))
    return 0


def run_logs(args, store: Store) -> int:
    container = records.get(store, args.container)
    path = os.path.join(records.container_dir(store, container.id), "container.log")
    out = sys.stdout.buffer
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with f:
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not args.follow:
                return 0
            current = runtime.refresh(store, records.get(store, container.id))
            if current.state != "running":
                out.write(f.read())
                return 0
            time.sleep(0.1)
