"""``pyunion load``: images from a docker-archive, an OCI archive or an OCI layout directory."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from unionfs.image.archive.compression import DecompressingReader, detect
from unionfs.image.archive.formats import ArchiveReader, Platform
from unionfs.image.archive.sources import DirectorySource, Source, TarSource
from unionfs.image.cli.common import short_name
from unionfs.image.cli.output import CliProgress
from unionfs.image.errors import ImageError
from unionfs.image.store import Store, Workspace
from unionfs.image.store.adding import ImageAdder

HELP = "Load images from a tar archive or an OCI layout directory"
EPILOG = """examples:
  pyunion load -i app.tar              a `docker save` tarball (legacy or Docker 25+)
  pyunion load -i app.oci.tar          an OCI archive
  pyunion load -i ./layout             an OCI image layout directory
  pyunion load < app.tar.gz            from stdin, compressed or not
  pyunion load -i multi.tar --platform linux/arm64
"""


def register(commands) -> None:
    p = commands.add_parser("load", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", metavar="PATH",
                   help="archive file or OCI layout directory (default: stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to pick from a multi-platform index (default: this "
                        "machine's)")
    p.set_defaults(run=run)


def open_archive(path: str | None, space: Workspace) -> Source:
    """A source for the archive at ``path`` (or stdin); compressed tars are expanded first."""
    if path == "-":
        path = None
    if path is not None and os.path.isdir(path):
        return DirectorySource(path)
    label = path or "stdin"
    try:
        stream = open(path, "rb") if path is not None else sys.stdin.buffer  # noqa: SIM115
    except OSError as e:
        raise ImageError(f"cannot open {path}: {e.strerror}") from None
    with stream:
        if path is not None and detect(_peek(path)) == "none":
            return TarSource(path, label)
        if path is None and sys.stdin.isatty():
            raise ImageError("no input: give -i FILE or pipe an archive to stdin")
        copy = space.new_path("archive.tar")
        try:
            with open(copy, "wb") as out:
                shutil.copyfileobj(DecompressingReader(stream), out, 1 << 20)  # type: ignore[misc]
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"{label}: cannot read the archive ({e})") from None
    return TarSource(copy, label)


def _peek(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def run(args, store: Store) -> int:
    platform = Platform.parse(args.platform) if args.platform else None
    progress = CliProgress(args.quiet)
    loaded: list[tuple[str, list[str]]] = []
    try:
        with store.adding() as space:
            source = open_archive(args.input, space)
            specs = ArchiveReader(source, store.limits, platform).images()
            adder = ImageAdder(store, space, progress)
            for n, spec in enumerate(specs):
                what = f"{source.label}: image {n + 1}" if len(specs) > 1 else source.label
                loaded.append((adder.add_image(spec, source, what), spec.names))
    except BaseException:
        progress.close()
        store.collect_garbage(blocking=False)  # layers unpacked for nothing go again
        raise
    progress.close()
    for image_id, names in loaded:
        if names:
            for name in names:
                print(f"Loaded image: {short_name(name)}")
        else:
            print(f"Loaded image ID: {image_id}")
    return 0
