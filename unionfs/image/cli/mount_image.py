"""``pyunion mount-image`` / ``umount-image``: an image's merged rootfs, read-only."""

from __future__ import annotations

from unionfs.image.cli.common import add_lazy_rate_option, resolve, short_id, short_name
from unionfs.image.errors import ImageError
from unionfs.image.mounts import mount_image, unmount_image
from unionfs.image.store import Store

HELP = ("Mount an image's merged rootfs read-only at DIR (a pyunion mount of its layers); DIR "
        "must be empty unless -o nonempty")
UMOUNT_HELP = "Unmount a rootfs mounted by mount-image (plain umount works too)"


def register(commands) -> None:
    p = commands.add_parser("mount-image", help=HELP, description=HELP,
                            epilog="example:\n  pyunion mount-image app:2.0 /mnt/app\n"
                                   "  ls /mnt/app; pyunion umount-image /mnt/app")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("mountpoint", metavar="DIR")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="nonempty",
                   help="nonempty: mount over a directory that has entries (hiding them)")
    p.add_argument("--lazy", action="store_true",
                   help="an image the store lacks is pulled first, lazily (pull --lazy)")
    p.add_argument("--lazy-timeout", type=float, metavar="SECONDS",
                   help="how long a first read of a lazily pulled file waits for the "
                        "registry before failing with EIO (default 30)")
    add_lazy_rate_option(p, "the rest of a lazily pulled image follows while mounted "
                            "(default: as its pull said)")
    p.set_defaults(run=run)
    u = commands.add_parser("umount-image", help=UMOUNT_HELP, description=UMOUNT_HELP)
    u.add_argument("mountpoint", metavar="DIR")
    u.set_defaults(run=run_umount)


def run(args, store: Store) -> int:
    options = [o for text in args.options for o in text.split(",") if o]
    unknown = [o for o in options if o != "nonempty"]
    if unknown:
        raise ImageError(f"unknown mount-image option {unknown[0]!r} (only nonempty)")
    if args.lazy:
        from unionfs.image.cli.create import find_image

        found = find_image(store, args.image, "missing", quiet=True, lazy=True)
    else:
        found = resolve(store, args.image)
    label = short_name(found.name) if found.name else short_id(found.image_id)
    print(mount_image(store, found.image_id, label, args.mountpoint,
                      nonempty="nonempty" in options, lazy_timeout=args.lazy_timeout,
                      lazy_rate=args.lazy_rate))
    return 0


def run_umount(args, store: Store) -> int:
    unmount_image(store, args.mountpoint)
    return 0
