"""``pyunion create``: a container (the image's layers + an empty upper), not yet started.

The options here are shared with ``run``.
"""

from __future__ import annotations

import argparse

from unionfs.image.cli.common import resolve, short_id, short_name
from unionfs.image.container import lifecycle
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.store import Store

HELP = "Create a new container from an image"
EPILOG = """examples:
  pyunion create --name web app:2.0
  pyunion create --name dev -e DEBUG=1 -v /srv/data:/data:ro app:2.0 /bin/sh
"""


def add_container_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the container's name (default: generated)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable (KEY alone takes the caller's value)")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="user[:group] or uid[:gid] to run as")
    p.add_argument("--hostname", help="the container's host name")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                   help="bind-mount a host path")
    p.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    p.add_argument("--network", choices=("host", "none"), default="host",
                   help="host (the default: the host's network) or none (loopback only)")
    p.add_argument("--entrypoint", help="override the image's entrypoint")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--runtime", default="runc", choices=("runc", "crun"),
                   help="the OCI runtime (default runc)")
    p.add_argument("--rm", action="store_true",
                   help="remove the container when its process exits")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def spec_from_args(args) -> RunSpec:
    return RunSpec(
        command=args.command or None,
        entrypoint=[args.entrypoint] if args.entrypoint is not None else None,
        env=args.env, workdir=args.workdir, user=args.user, hostname=args.hostname,
        volumes=args.volume, read_only=args.read_only, network=args.network, tty=args.tty,
        interactive=args.interactive, runtime=args.runtime, auto_remove=args.rm)


def create_from_args(args, store: Store) -> Container:
    found = resolve(store, args.image)
    label = short_name(found.name) if found.name else short_id(found.image_id)
    return lifecycle.create(store, found.image_id, label, args.name, spec_from_args(args))


def register(commands) -> None:
    p = commands.add_parser("create", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_container_options(p)
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    print(create_from_args(args, store).id)
    return 0
