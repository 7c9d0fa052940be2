"""``pyunion kill``, ``restart``, ``pause``, ``unpause`` and ``rename``: a container's process
and name, as docker's commands of those names."""

from __future__ import annotations

import signal
import sys

from unionfs.image import events
from unionfs.image.container import records, runtime
from unionfs.image.container.session import Session, refresh
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store

KILL_HELP = "Send a signal (default KILL) to running containers"
RESTART_HELP = "Restart containers (stop, then start detached)"
PAUSE_HELP = "Freeze all processes of running containers (the cgroup freezer)"
UNPAUSE_HELP = "Thaw paused containers"
RENAME_HELP = "Rename a container"


def register(commands) -> None:
    k = commands.add_parser("kill", help=KILL_HELP, description=KILL_HELP,
                            epilog="examples:\n  pyunion kill web\n  pyunion kill -s HUP web")
    k.add_argument("-s", "--signal", default="KILL",
                   help="signal name (KILL, SIGHUP, …) or number (default KILL)")
    k.add_argument("containers", nargs="+", metavar="CONTAINER")
    k.set_defaults(run=run_kill)
    r = commands.add_parser("restart", help=RESTART_HELP, description=RESTART_HELP,
                            epilog="example:\n  pyunion restart -t 2 web")
    r.add_argument("-t", "--time", type=float, default=10.0,
                   help="seconds to wait for it to stop before killing it (default 10)")
    r.add_argument("containers", nargs="+", metavar="CONTAINER")
    r.set_defaults(run=run_restart)
    for name, help_text, paused in (("pause", PAUSE_HELP, True),
                                    ("unpause", UNPAUSE_HELP, False)):
        p = commands.add_parser(name, help=help_text, description=help_text,
                                epilog=f"example:\n  pyunion {name} web")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(run=run_pause, paused=paused)
    n = commands.add_parser("rename", help=RENAME_HELP, description=RENAME_HELP,
                            epilog="example:\n  pyunion rename web web-old")
    n.add_argument("container", metavar="CONTAINER")
    n.add_argument("new_name", metavar="NEW_NAME")
    n.set_defaults(run=run_rename)


def signal_number(text: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9``."""
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name):
            return int(signal.Signals[name])
    raise ImageError(f"invalid signal: {text}")


def _each(names: list[str], action) -> int:
    """``action`` on each container named; an error is one line and makes the status 1, and
    the others are still done (as docker does)."""
    status = 0
    for text in names:
        try:
            action(text)
            print(text)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    return status


def _running(store: Store, text: str) -> records.Container:
    container = refresh(store, records.get(store, text))
    if container.state != "running":
        raise Conflict(f"container {container.name} is not running")
    return container


def run_kill(args, store: Store) -> int:
    number = signal_number(args.signal)

    def kill(text: str) -> None:
        Session(store, _running(store, text)).kill(number)

    return _each(args.containers, kill)


def run_restart(args, store: Store) -> int:
    def restart(text: str) -> None:
        Session(store, refresh(store, records.get(store, text))).restart(args.time)

    return _each(args.containers, restart)


def run_pause(args, store: Store) -> int:
    def pause(text: str) -> None:
        container = _running(store, text)
        if runtime.is_paused(store, container) == args.paused:
            raise Conflict(f"container {container.name} is "
                           + ("already paused" if args.paused else "not paused"))
        runtime.pause(store, container, args.paused)
        events.record_container(store, container, "pause" if args.paused else "unpause")

    return _each(args.containers, pause)


def run_rename(args, store: Store) -> int:
    container = records.get(store, args.container)
    records.rename(store, container, args.new_name)
    events.record_container(store, records.get(store, container.id), "rename",
                            oldName=container.name)
    return 0
