"""``pyunion pull``: an image from a registry (only the layers the store lacks)."""

from __future__ import annotations

import argparse
import sys

import trio

from unionfs.image import reference
from unionfs.image.archive.formats import Platform
from unionfs.image.cli.output import CliProgress
from unionfs.image.registry.client import RegistryClient, RegistryError
from unionfs.image.registry.config import RegistrySettings
from unionfs.image.registry.pull import Puller
from unionfs.image.store import Store

HELP = "Download an image from a registry"
EPILOG = """examples:
  pyunion pull 127.0.0.1:5000/busybox:1.35     a local registry (plain HTTP on loopback)
  pyunion pull debian:bookworm                 docker.io/library/debian:bookworm
  pyunion pull registry.lan:5000/app@sha256:4f2a...
  pyunion pull --platform linux/arm64 alpine
"""


def add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP (and HTTPS without certificate checks failing over "
                        "to HTTP) for this registry")


def register(commands) -> None:
    p = commands.add_parser("pull", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to pick from a multi-platform image")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    add_registry_options(p)
    p.set_defaults(run=run)


async def _pull(store: Store, args, progress: CliProgress):
    """Pulls through the configured mirrors of the reference's registry first, then from the
    registry itself."""
    ref = reference.parse(args.image)
    platform = Platform.parse(args.platform) if args.platform else None
    settings = RegistrySettings.load()
    mirrors = [m.removeprefix("https://").removeprefix("http://").rstrip("/")
               for m in settings.mirrors.get(ref.domain, [])]
    for mirror in mirrors:
        try:
            async with RegistryClient(mirror, insecure=args.insecure,
                                      settings=settings) as client:
                return ref, await Puller(store, client, ref, platform, progress).pull()
        except RegistryError as e:
            print(f"pyunion: mirror {mirror} failed ({e}); trying the next", file=sys.stderr)
    async with RegistryClient(ref.domain, insecure=args.insecure, settings=settings) as client:
        return ref, await Puller(store, client, ref, platform, progress).pull()


def run(args, store: Store) -> int:
    ref = reference.parse(args.image)
    if not args.quiet:
        print(f"{ref.tag or ref.digest}: Pulling from {ref.short_repository}", flush=True)
    progress = CliProgress(args.quiet)
    try:
        ref, result = trio.run(_pull, store, args, progress)
    except BaseException:
        progress.close()
        store.collect_garbage(blocking=False)
        raise
    progress.close()
    shown = ref.short_name if ref.tag else f"{ref.short_repository}@{ref.digest}"
    if not args.quiet:
        print(f"Digest: {result.manifest_digest}")
        print("Status: " + (f"Downloaded newer image for {shown}" if result.downloaded
                            else f"Image is up to date for {shown}"))
    print(ref.name if ref.tag else f"{ref.repository}@{ref.digest}")
    return 0
