"""``pyunion diff``: what a container changed (A added, C changed, D deleted), from its upper."""

from __future__ import annotations

from unionfs.image.container import records, rootfs
from unionfs.image.container.changes import upper_changes
from unionfs.image.store import Store

HELP = "Inspect changes to files or directories on a container's filesystem"


def register(commands) -> None:
    p = commands.add_parser("diff", help=HELP, description=HELP,
                            epilog="example:\n  pyunion diff web")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    container = records.get(store, args.container)
    for kind, path in upper_changes(rootfs.upper_dir(store, container),
                                    rootfs.lowers(store, container)):
        print(f"{kind} {path}")
    return 0
