"""``pyunion rm``: remove containers (their upper goes; the image stays)."""

from __future__ import annotations

import sys

from unionfs.image.container import records
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Remove one or more containers"


def register(commands) -> None:
    p = commands.add_parser("rm", help=HELP, description=HELP,
                            epilog="example:\n  pyunion rm -f web")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    status = 0
    for text in args.containers:
        try:
            Session(store, records.get(store, text)).remove(force=args.force)
            print(text)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    return status
