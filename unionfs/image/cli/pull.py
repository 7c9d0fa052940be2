"""``pyunion pull``: an image from a registry (only the layers the store lacks); and the pull
``run`` and ``create`` make on demand (``--pull missing|always|never|newer``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO, TypeVar

import trio

from unionfs.image import events, reference
from unionfs.image.archive.formats import Platform
from unionfs.image.cli.common import Resolved, add_lazy_rate_option, warn_foreign_platform
from unionfs.image.cli.output import CliProgress
from unionfs.image.errors import ImageError
from unionfs.image.progress import Progress
from unionfs.image.reference import Reference
from unionfs.image.registry.client import RegistryClient, RegistryError
from unionfs.image.registry.config import RegistrySettings
from unionfs.image.registry.pull import Puller, PullResult
from unionfs.image.registry.search import tags
from unionfs.image.store import Store

HELP = "Download an image from a registry"
EPILOG = """examples:
  pyunion pull 127.0.0.1:5000/busybox:1.35     a local registry (plain HTTP on loopback)
  pyunion pull debian:bookworm                 docker.io/library/debian:bookworm
  pyunion pull registry.lan:5000/app@sha256:4f2a...
  pyunion pull --platform linux/arm64 alpine
  pyunion pull -a 127.0.0.1:5000/app             every tag of the repository
"""
T = TypeVar("T")


class _TlsVerify(argparse.Action):
    """podman's ``--tls-verify[=true|false]``: false is ``--insecure``."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        text = (value or "true").lower()
        if text not in ("true", "false", "1", "0"):
            parser.error(f"{option_string}: expected true or false, not {value!r}")
        namespace.insecure = text in ("false", "0")


def add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP (and HTTPS without certificate checks failing over "
                        "to HTTP) for this registry")
    p.add_argument("--tls-verify", action=_TlsVerify, nargs="?", metavar="true|false",
                   help="podman's spelling: --tls-verify=false is --insecure")


def register(commands) -> None:
    p = commands.add_parser("pull", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to pick from a multi-platform image")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="pull every tag of the repository (the name takes no tag)")
    add_lazy_option(p)
    add_lazy_rate_option(p, "the rest of a lazy layer follows while it is mounted "
                            "(default 4M)")
    add_registry_options(p)
    p.set_defaults(run=run)


def add_lazy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lazy", action="store_true",
                   help="fetch only the TOC of eStargz layers now, each file on its first "
                        "use (the registry must serve Range requests)")


async def _through_mirrors(ref: Reference, insecure: bool,
                           work: Callable[[RegistryClient], Awaitable[T]]) -> T:
    """``work`` with a client of each configured mirror of the reference's registry in turn,
    then with one of the registry itself."""
    settings = RegistrySettings.load()
    mirrors = [m.removeprefix("https://").removeprefix("http://").rstrip("/")
               for m in settings.mirrors.get(ref.domain, [])]
    for mirror in mirrors:
        try:
            async with RegistryClient(mirror, insecure=insecure, settings=settings) as client:
                return await work(client)
        except RegistryError as e:
            print(f"pyunion: mirror {mirror} failed ({e}); trying the next", file=sys.stderr)
    async with RegistryClient(ref.domain, insecure=insecure, settings=settings) as client:
        return await work(client)


def _shown(ref: Reference) -> str:
    return ref.short_name if ref.tag else f"{ref.short_repository}@{ref.digest}"


def pull_image(store: Store, ref: Reference, *, platform: Platform | None = None,
               insecure: bool = False, quiet: bool = False,
               out: TextIO | None = None, lazy: bool = False,
               status: bool = True, lazy_rate: int | None = None,
               first_paths: Callable[[dict], list[list[str]]] | None = None) -> PullResult:
    """Pulls ``ref``, telling ``out`` (stdout by default) what happens as docker does: the
    registry, each layer (on stderr), the digest and (if ``status``) a ``Status:`` line:
    "Downloaded newer image" when anything was fetched or the tag now names another image,
    "Image is up to date" otherwise. ``first_paths`` (a lazy pull for a container): the
    image's config -> the paths the container opens first (``Puller.first_paths``)."""
    out = out or sys.stdout
    if not quiet:
        print(f"{ref.tag or ref.digest}: Pulling from {ref.short_repository}", file=out,
              flush=True)
    progress = CliProgress(quiet)

    def pull(client: RegistryClient) -> Awaitable[PullResult]:
        puller = Puller(store, client, ref, platform, progress, lazy=lazy)
        puller.lazy_rate = lazy_rate
        puller.first_paths = first_paths
        return puller.pull()

    try:
        result = trio.run(_through_mirrors, ref, insecure, pull)
    except BaseException:
        progress.close()
        store.collect_garbage(blocking=False)
        raise
    progress.close()
    events.record(store, "image", "pull", _shown(ref))
    if not quiet:
        print(f"Digest: {result.manifest_digest}", file=out, flush=True)
        if status:
            print_status(_shown(ref), result.updated, out)
    return result


def print_status(shown: str, updated: bool, out: TextIO) -> None:
    print("Status: " + (f"Downloaded newer image for {shown}" if updated
                        else f"Image is up to date for {shown}"), file=out, flush=True)


def run(args, store: Store) -> int:
    if args.lazy_rate is not None and not args.lazy:
        raise ImageError("--lazy-rate needs --lazy")
    ref = reference.parse(args.image)
    platform = Platform.parse(args.platform) if args.platform else None
    if args.all_tags:
        return _pull_all_tags(args, store, ref, platform)
    result = pull_image(store, ref, platform=platform, insecure=args.insecure,
                        quiet=args.quiet, lazy=args.lazy, lazy_rate=args.lazy_rate)
    if platform is None:
        warn_foreign_platform(store, result.image_id)
    print(ref.name if ref.tag else f"{ref.repository}@{ref.digest}")
    return 0


def _pull_all_tags(args, store: Store, ref: Reference, platform: Platform | None) -> int:
    """docker's ``pull -a``: each tag in turn (one that fails is skipped with a warning),
    one ``Status:`` line for the repository."""
    named = reference.parse(args.image, default_tag=False)
    if named.tag or named.digest:
        raise ImageError("tag can't be used with --all-tags/-a")

    def list_tags(client: RegistryClient) -> Awaitable[list[str]]:
        return tags(client, ref.path)

    found = sorted(trio.run(_through_mirrors, ref, args.insecure, list_tags))
    if not found:
        raise ImageError(f"{ref.repository}: the registry lists no tags")
    out = sys.stdout
    updated = pulled = False
    for tag in found:
        try:
            result = pull_image(store, ref.with_tag(tag), platform=platform,
                                insecure=args.insecure, quiet=args.quiet, lazy=args.lazy,
                                status=False)
        except (RegistryError, ImageError) as e:
            print(f"pyunion: warning: pulling tag {tag}: {e}", file=sys.stderr, flush=True)
            continue
        pulled = True
        updated = updated or result.updated
        if platform is None:
            warn_foreign_platform(store, result.image_id)
    if not pulled:
        raise ImageError(f"{ref.repository}: no tag could be pulled")
    if not args.quiet:
        print_status(ref.short_repository, updated, out)
    print(ref.repository)
    return 0


# ---------------------------------------------------------------------- pulls for containers


def image_for_container(store: Store, ref: Reference, policy: str, local: Resolved | None,
                        quiet: bool, lazy: bool = False,
                        first_paths: Callable[[dict], list[list[str]]] | None = None
                        ) -> Resolved:
    """The image ``run`` or ``create`` uses under the pull policy ``policy`` (``missing``,
    ``always`` or ``newer``), ``local`` being what the store has by that name. The pull's
    output goes to stderr: stdout is the container's (or its id)."""
    if local is not None and policy == "newer" and _is_current(store, ref, local, quiet):
        return local
    if local is None:
        print(f"Unable to find image '{_shown(ref)}' locally", file=sys.stderr, flush=True)
    result = pull_image(store, ref, quiet=quiet, out=sys.stderr, lazy=lazy,
                        first_paths=first_paths)
    return Resolved(result.image_id, ref.name if ref.tag else None)


def _is_current(store: Store, ref: Reference, local: Resolved, quiet: bool) -> bool:
    """Whether the registry's manifest for ``ref`` (this platform's) is the local image's; so
    too when the registry cannot be asked, as podman's ``--pull newer`` has it."""
    def resolve(client: RegistryClient) -> Awaitable[tuple[bytes, str, str, dict]]:
        return Puller(store, client, ref, None, Progress()).resolve()

    try:
        digest = trio.run(_through_mirrors, ref, False, resolve)[2]
    except RegistryError as e:
        print(f"Status: Using the local image for {_shown(ref)} (cannot check the registry "
              f"for a newer one: {e})", file=sys.stderr, flush=True)
        return True
    row = store.db.execute("SELECT manifest_digest FROM images WHERE id = ?",
                           (local.image_id,)).fetchone()
    if row is None or row["manifest_digest"] != digest:
        return False
    if not quiet:
        print(f"Status: Image is up to date for {_shown(ref)}", file=sys.stderr, flush=True)
    return True
