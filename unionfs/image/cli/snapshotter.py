"""``pyunion snapshotter``: containerd's Snapshots service (a proxy snapshotter plugin) over
the store, so that containerd (``ctr``, nerdctl, Kubernetes' CRI plugin) runs containers on
pyunion mounts. See unionfs/image/snapshotter/."""

from __future__ import annotations

import os

from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Serve containerd's Snapshots API (a proxy snapshotter) over the store"
EPILOG = """containerd's config.toml:
  [proxy_plugins.pyunion]
    type = "snapshot"
    address = "/run/pyunion/snapshotter.sock"

then: ctr images pull --snapshotter pyunion REF; ctr run --rm --snapshotter pyunion REF ID CMD.
The snapshotter mounts each snapshot's layer stack itself (a mount.pyunion daemon per active
snapshot, left running across restarts of the snapshotter) and gives containerd bind mounts
of it: it must run in containerd's mount namespace. As a systemd unit: KillMode=process, or
a restart of the unit kills the mounts of running containers.

example:
  pyunion --root /var/lib/pyunion snapshotter --address /run/pyunion/snapshotter.sock"""


def default_address() -> str:
    if os.geteuid() == 0:
        return "/run/pyunion/snapshotter.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return os.path.join(runtime, "pyunion", "snapshotter.sock")


def register(commands) -> None:
    from argparse import RawDescriptionHelpFormatter

    p = commands.add_parser("snapshotter", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("--address", metavar="SOCKET", default=default_address(),
                   help="the unix socket to serve on (default: %(default)s)")
    p.add_argument("--share-layers", action="store_true",
                   help="make a layer that the store already has (pyunion pull) hard links to "
                   "it instead of a second copy; its files then show a link count of 2 or more")
    p.add_argument("--daemons-ahead", type=int, default=2, metavar="N",
                   help="mount daemons kept started ahead of need, so that a container's "
                   "rootfs is mounted without waiting for a Python start (default: "
                   "%(default)s; each is an idle process of about 30 MB)")
    p.add_argument("--debug", action="store_true",
                   help="log every call, its key and its duration on stderr")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    from unionfs.image.snapshotter.service import serve
    from unionfs.image.snapshotter.snapshots import Snapshots

    if args.daemons_ahead < 0:
        raise ImageError("--daemons-ahead: expected 0 or more")
    snapshots = Snapshots(store, share_layers=args.share_layers,
                          daemons_ahead=args.daemons_ahead)
    snapshots.cleanup()
    return serve(snapshots, args.address, args.debug)
