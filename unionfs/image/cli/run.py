"""``pyunion run`` and ``pyunion start``: a container's process, under a real OCI runtime."""

from __future__ import annotations

import argparse
import sys

from unionfs.image.cli.create import add_container_options, create_from_args
from unionfs.image.container import records, restart
from unionfs.image.container.session import Session, refresh
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store

HELP = "Create and run a container (mount its rootfs, start it with runc, wait)"
EPILOG = """examples:
  pyunion run --rm app:2.0 uname -a        the host's kernel: the bootfs is shared
  pyunion run -it --name dev app:2.0 sh    an interactive shell
  pyunion run -d --name web app:2.0        detached; see pyunion logs/stop/wait
  pyunion run --pull always --rm 127.0.0.1:5000/busybox:1.35 true
  pyunion run -d -p 8080-8081:80-81 app:2.0 httpd -f -p 80
  pyunion run --rm --network host app:2.0 wget -qO- http://127.0.0.1:5000/v2/
An image that is not in the store is pulled first (--pull missing, the default).
The container's network is, by default, podman's: for root the default bridge (pyunion
network), for an ordinary user slirp4netns; --network host shares the host's.
The exit status of the container's process is run's exit status; run's own failures exit 125,
126 when the command cannot be invoked, 127 when it is not found (as docker's run).
"""
START_HELP = "Start one or more stopped containers (detached, unless -a)"


def register(commands) -> None:
    p = commands.add_parser("run", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container id")
    add_container_options(p)
    p.set_defaults(run=run)
    s = commands.add_parser("start", help=START_HELP, description=START_HELP)
    s.add_argument("-a", "--attach", action="store_true", help="wait, with output attached")
    s.add_argument("containers", nargs="+", metavar="CONTAINER")
    s.set_defaults(run=run_start)


def run(args, store: Store) -> int:
    if args.tty and not sys.stdin.isatty():  # exit status 1, as docker's client has it
        raise ImageError("the input device is not a TTY (drop -t, or run from a terminal)", 1)
    container = create_from_args(args, store)
    session = Session(store, container)
    if args.detach:
        session.start_detached()
        print(container.id)
        return 0
    try:
        code = session.run()
    finally:
        if args.rm:
            session.remove(force=True)
    current = records.get(store, container.id) if not args.rm else None
    if current is not None and restart.wanted(store, current, code, 0):
        restart.count(store, current, 1)
        Session(store, current).start_detached(clear=False)  # its monitor restarts it now
    return code


def run_start(args, store: Store) -> int:
    status = 0
    for text in args.containers:
        try:
            container = refresh(store, records.get(store, text))
            if container.state == "running":
                raise Conflict(f"container {container.name} is already running")
            if args.attach:
                status = Session(store, container).run()
            else:
                Session(store, container).start_detached()
                print(text)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    return status
