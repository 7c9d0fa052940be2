"""``pyunion push``: an image from the store to a registry."""

from __future__ import annotations

import argparse

import trio

from unionfs.image import reference
from unionfs.image.archive.convert import ConvertedImage, convert_image
from unionfs.image.cli.common import resolve
from unionfs.image.cli.output import CliProgress
from unionfs.image.cli.pull import add_registry_options
from unionfs.image.errors import ImageError
from unionfs.image.lazy import files_opened_by, refuse_incomplete
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.push import Pusher
from unionfs.image.store import Store

HELP = "Upload an image to a registry"
EPILOG = """examples:
  pyunion tag app:1.1 127.0.0.1:5000/app:1.1 && pyunion push 127.0.0.1:5000/app:1.1
  pyunion push --image app:1.1 registry.lan:5000/team/app:1.1
  pyunion push app:1.1 registry.lan:5000/team/app:1.1     (podman's SOURCE DESTINATION)
  pyunion push --format estargz 127.0.0.1:5000/app:1.1   (for pyunion pull --lazy)
"""


def register(commands) -> None:
    p = commands.add_parser("push", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME[:TAG]", help="where to push (the store's name for the "
                   "image, unless --image names another)")
    p.add_argument("destination", nargs="?", metavar="DESTINATION",
                   help="where to push, NAME then being the local image (podman's form)")
    p.add_argument("--image", metavar="IMAGE", help="the local image to push (default: NAME)")
    p.add_argument("--format", choices=("stored", "estargz"), default="stored",
                   help="the layers as stored (default), or rewritten as eStargz for lazy "
                        "pulls (pyunion pull --lazy)")
    p.add_argument("--prefetch", action="append", metavar="PATH", default=[],
                   help="with --format estargz: a file a lazy pull fetches at once, before "
                        "its first use (repeatable)")
    p.add_argument("--prefetch-from", metavar="CMD",
                   help="with --format estargz: run CMD (by /bin/sh -c) in a container of "
                        "the image, to its end, and put the files it opens first, for a lazy "
                        "pull to fetch at once")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    add_registry_options(p)
    p.set_defaults(run=run)


async def _push(store: Store, ref, image_id: str, insecure: bool, progress: CliProgress,
                converted: ConvertedImage | None):
    async with RegistryClient(ref.domain, insecure=insecure) as client:
        return await Pusher(store, client, ref, image_id, progress, converted).push()


def run(args, store: Store) -> int:
    if args.destination:
        if args.image:
            raise ImageError("give the local image as --image or as SOURCE, not both")
        args.image, args.name = args.name, args.destination
    ref = reference.parse(args.name)
    if ref.digest:
        raise ImageError("push a tag, not a digest")
    image_id = resolve(store, args.image or args.name).image_id
    refuse_incomplete(store, image_id, "push")
    if (args.prefetch or args.prefetch_from) and args.format != "estargz":
        raise ImageError("--prefetch and --prefetch-from need --format estargz")
    if not args.quiet:
        print(f"The push refers to repository [{ref.repository}]", flush=True)
    with store.workspace() as space:
        prefetch = args.prefetch + (files_opened_by(
            store, image_id, args.image or args.name, args.prefetch_from, space.path)
            if args.prefetch_from else [])
        converted = convert_image(store, image_id, space.path, prefetch) \
            if args.format == "estargz" else None
        progress = CliProgress(args.quiet)
        try:
            result = trio.run(_push, store, ref, image_id, args.insecure, progress, converted)
        finally:
            progress.close()
    print(f"{ref.tag}: digest: {result.manifest_digest} size: {result.manifest_size}")
    return 0
