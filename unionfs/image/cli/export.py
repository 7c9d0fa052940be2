"""``pyunion export``: a container's merged rootfs as one tar."""

from __future__ import annotations

import contextlib
import os
import sys

from unionfs.image.archive.generate import write_layer_tar
from unionfs.image.container import records, rootfs
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Export a container's merged rootfs as a tar archive"


def register(commands) -> None:
    p = commands.add_parser("export", help=HELP, description=HELP,
                            epilog="example:\n  pyunion export web -o rootfs.tar")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("-o", "--output", metavar="FILE", help="write to a file instead of stdout")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    container = records.get(store, args.container)
    if args.output is None and sys.stdout.isatty():
        raise ImageError("cowardly refusing to write an archive to a terminal (use -o FILE)")
    mounted_here = not rootfs.is_mounted(container)
    point = rootfs.mount(store, container)
    try:
        if args.output is None:
            write_layer_tar(point, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            temp = f"{args.output}.pyunion-tmp-{os.getpid()}"
            try:
                with open(temp, "wb") as f:
                    write_layer_tar(point, f)
                os.rename(temp, args.output)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
    finally:
        if mounted_here:
            rootfs.unmount(store, records.get(store, container.id))
    return 0
