"""``pyunion snapshotter``: containerd's Snapshots service (a proxy snapshotter plugin) over
the store, so that containerd (``ctr``, nerdctl, Kubernetes' CRI plugin) runs containers on
pyunion mounts. See unionfs/image/snapshotter/."""

from __future__ import annotations

import os

from unionfs.image.store import Store

HELP = "Serve containerd's Snapshots API (a proxy snapshotter) over the store"
EPILOG = """containerd's config.toml:
  [proxy_plugins.pyunion]
    type = "snapshot"
    address = "/run/pyunion/snapshotter.sock"

then: ctr images pull --snapshotter pyunion REF; ctr run --rm --snapshotter pyunion REF ID CMD.
Mounts of more than one layer have the type fuse3.pyunion-overlayfs: containerd runs
mount.fuse3, which runs pyunion-overlayfs, so both must be on containerd's PATH.

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
    p.add_argument("--debug", action="store_true",
                   help="log every call, its key and its duration on stderr")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    from unionfs.image.snapshotter.service import serve
    from unionfs.image.snapshotter.snapshots import Snapshots

    snapshots = Snapshots(store, share_layers=args.share_layers)
    snapshots.cleanup()
    return serve(snapshots, args.address, args.debug)
