"""``pyunion create``: a container (the image's layers + an empty upper), not yet started.

The options here are shared with ``run``.
"""

from __future__ import annotations

import argparse
import re

from unionfs.image import reference
from unionfs.image.cli.common import ID_PREFIX, Resolved, resolve, short_id, short_name
from unionfs.image.container import lifecycle
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.errors import NotFound
from unionfs.image.store import Store

HELP = "Create a new container from an image"
EPILOG = """examples:
  pyunion create --name web app:2.0
  pyunion create --name dev -e DEBUG=1 -v /srv/data:/data:ro app:2.0 /bin/sh
  pyunion create --pull always 127.0.0.1:5000/busybox:1.35
"""
PULL_POLICIES = ("missing", "always", "never", "newer")
# an image id (not a name a registry could have): sha256:HEX, or all 64 hex digits
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{1,64}|[0-9a-f]{64}")


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
    p.add_argument("--pull", choices=PULL_POLICIES, default="missing",
                   help="pull the image: if it is missing (the default), always, never, or "
                        "if the registry has a newer one")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the pull output")
    p.add_argument("--lazy", action="store_true",
                   help="a pull fetches eStargz layers lazily (see pyunion pull --lazy)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def spec_from_args(args) -> RunSpec:
    return RunSpec(
        command=args.command or None,
        entrypoint=[args.entrypoint] if args.entrypoint is not None else None,
        env=args.env, workdir=args.workdir, user=args.user, hostname=args.hostname,
        volumes=args.volume, read_only=args.read_only, network=args.network, tty=args.tty,
        interactive=args.interactive, runtime=args.runtime, auto_remove=args.rm)


def find_image(store: Store, text: str, policy: str, quiet: bool = False,
               lazy: bool = False) -> Resolved:
    """The image by name, digest or id, pulled first as ``policy`` says (docker's and podman's
    ``--pull``); "invalid reference format" for text that is neither a name nor an id."""
    if not ID_PREFIX.fullmatch(text):
        reference.parse(text)
    try:
        local: Resolved | None = resolve(store, text)
    except NotFound:
        local = None
    by_id = local is not None and local.name is None and "@" not in text
    if policy == "never" or _IMAGE_ID.fullmatch(text) or by_id or (
            local is not None and policy == "missing"):
        if local is None:
            raise NotFound(f"No such image: {text}")
        return local
    from unionfs.image.cli.pull import image_for_container  # the registry client: only now

    return image_for_container(store, reference.parse(text), policy, local, quiet, lazy)


def create_from_args(args, store: Store) -> Container:
    found = find_image(store, args.image, args.pull, args.quiet, args.lazy)
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
