"""``pyunion build``: an image from a Containerfile or Dockerfile (unionfs.image.build)."""

from __future__ import annotations

import argparse
import os

from unionfs.image import reference
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Build an image from a Containerfile or Dockerfile"
EPILOG = """examples:
  pyunion build -t app:1.0 .                      ./Containerfile (or ./Dockerfile)
  pyunion build -f docker/Dockerfile.prod --build-arg VERSION=2 -t app:2 .
  pyunion build --target builder -q .             only the image id on stdout
  pyunion build --format estargz -t app:1.0 .     eStargz layers, for pyunion pull --lazy
Each RUN runs under runc in a container whose rootfs is a pyunion mount of the layers so far;
its changes become the step's layer. A step whose parent and instruction (for COPY/ADD: the
copied files' names, modes and contents) are unchanged is taken from the cache (--no-cache:
never).
"""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not sep:  # --build-arg NAME takes the caller's value, as docker does
        value = os.environ.get(key, "")
    return key, value


def register(commands) -> None:
    p = commands.add_parser("build", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]",
                   help="name the image (repeatable)")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="the Containerfile (default: CONTEXT/Containerfile, else Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], type=_key_value,
                   metavar="KEY=VALUE", help="set a build argument (repeatable)")
    p.add_argument("--target", metavar="STAGE", help="build up to this stage")
    p.add_argument("--no-cache", action="store_true", help="build every step")
    p.add_argument("--pull", action="store_true",
                   help="pull FROM images even when the store has them")
    p.add_argument("--label", action="append", default=[], type=_key_value,
                   metavar="KEY=VALUE", help="add a label to the image (repeatable)")
    p.add_argument("--iidfile", metavar="FILE", help="write the image id to FILE")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the image id (no steps, no RUN output)")
    p.add_argument("--platform", metavar="OS/ARCH",
                   help="the platform to build for: only the host's (no emulation)")
    p.add_argument("--squash", action="store_true",
                   help="squash the layers the build adds into one")
    p.add_argument("--format", choices=("oci", "estargz"), default="oci",
                   help="the layers the build writes: gzip (oci, the default) or eStargz, "
                        "which push sends as they are, for lazy pulls (pyunion pull --lazy)")
    p.add_argument("--network", choices=("host", "none"), default="host",
                   help="RUN's network: host (default) or none (loopback only)")
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    from unionfs.image.build.builder import Builder, Options
    from unionfs.image.cli.create import find_image

    if args.platform:
        from unionfs.image.archive.formats import Platform

        wanted, host = Platform.parse(args.platform), Platform.host()
        if (wanted.os, wanted.architecture) != (host.os, host.architecture):
            raise ImageError(f"cannot build for {wanted}: only the host's platform ({host}) "
                             "can run RUN steps")
    context = os.path.abspath(args.context)
    if not os.path.isdir(context):
        raise ImageError(f"the build context {args.context} is not a directory")
    tags = [reference.parse(t).name for t in args.tag]
    options = Options(context=context, file=args.file, tags=tags,
                      build_args=dict(args.build_arg), target=args.target,
                      no_cache=args.no_cache, labels=dict(args.label), quiet=args.quiet,
                      network=args.network, squash=args.squash,
                      layer_format="estargz" if args.format == "estargz" else "gzip")
    policy = "always" if args.pull else "missing"

    def resolve_image(text: str) -> str:
        return find_image(store, text, policy, quiet=args.quiet).image_id

    image_id = Builder(store, options, resolve_image).build()
    if args.iidfile:
        with open(args.iidfile, "w") as f:
            f.write(image_id)
    print(image_id.partition(":")[2])
    return 0
