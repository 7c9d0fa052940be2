"""``pyunion mount`` / ``pyunion umount``: a container's rootfs, as podman mount does."""

from __future__ import annotations

from unionfs.image.container import records, rootfs
from unionfs.image.store import Store

HELP = "Mount a container's rootfs (a pyunion mount) and print where"
UMOUNT_HELP = "Unmount a container's rootfs"


def register(commands) -> None:
    p = commands.add_parser("mount", help=HELP, description=HELP,
                            epilog='example:\n  chroot "$(pyunion mount web)" /bin/sh')
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("directory", nargs="?", metavar="DIR",
                   help="where to mount (default: the container's own merged/ directory)")
    p.set_defaults(run=run)
    u = commands.add_parser("umount", help=UMOUNT_HELP, description=UMOUNT_HELP)
    u.add_argument("containers", nargs="+", metavar="CONTAINER")
    u.set_defaults(run=run_umount)


def run(args, store: Store) -> int:
    print(rootfs.mount(store, records.get(store, args.container), args.directory))
    return 0


def run_umount(args, store: Store) -> int:
    for text in args.containers:
        container = records.get(store, text)
        if container.state == "running":
            from unionfs.image.errors import Conflict

            raise Conflict(f"container {container.name} is running; its rootfs stays mounted")
        rootfs.unmount(store, container)
        print(container.name)
    return 0
