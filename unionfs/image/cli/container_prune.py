"""``pyunion container prune``: remove every stopped container."""

from __future__ import annotations

import sys

from unionfs.image.container import records, session
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Remove all stopped containers"


def register(commands) -> None:
    p = commands.add_parser("container-prune", help=HELP, description=HELP,  # as "prune"
                            epilog="example:\n  pyunion container prune -f")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all stopped containers.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    status = 0
    print("Deleted Containers:")
    for container in records.all_containers(store):
        container = session.refresh(store, container)
        if container.state == "running":
            continue
        try:
            Session(store, container).remove(force=False)
            print(container.id)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    return status
