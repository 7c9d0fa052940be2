"""``pyunion import``: a rootfs directory or tarball becomes a one-layer base image."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys

from unionfs.image import mediatypes as mt
from unionfs.image.archive.compression import CHUNK, DecompressingReader, HashingGzipFile
from unionfs.image.archive.formats import ImageSpec, LayerSpec, Platform
from unionfs.image.archive.generate import write_layer_tar
from unionfs.image.archive.sources import DirectorySource
from unionfs.image.cli.output import CliProgress
from unionfs.image.cli.tag import parse_new_name
from unionfs.image.config_changes import apply_changes
from unionfs.image.errors import ImageError
from unionfs.image.store import Store, Workspace
from unionfs.image.store.adding import ImageAdder

HELP = "Import a rootfs directory or tarball as a one-layer base image"
EPILOG = """examples:
  pyunion import ./rootfs base:1.0                 a directory
  pyunion import rootfs.tar.gz base:1.0            a tarball (gzip, zstd or plain)
  cat rootfs.tar | pyunion import - base:1.0       from stdin
  pyunion import -c 'CMD ["/bin/sh"]' -m "busybox base" ./rootfs base:1.0
"""


def register(commands) -> None:
    p = commands.add_parser("import", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="directory, tarball, or - for stdin")
    p.add_argument("name", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-m", "--message", default="", help="commit message for the history")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, "
                        "LABEL, EXPOSE, VOLUME)")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    p.set_defaults(run=run)


def _layer_from_directory(root: str, space: Workspace) -> tuple[str, str]:
    blob = space.new_path("import.tar.gz")
    with open(blob, "wb") as out:
        sink = HashingGzipFile(out)
        write_layer_tar(root, sink)  # type: ignore[arg-type]
        sink.finish()
    return blob, "sha256:" + sink.plain.hexdigest()


def _layer_from_tarball(path: str | None, space: Workspace) -> tuple[str, str]:
    if path is None:
        if sys.stdin.isatty():
            raise ImageError("no input: give a directory, a tarball or pipe a tar to stdin")
        blob = space.new_path("import.blob")
        with open(blob, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, CHUNK)
        path = blob
    plain = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            reader = DecompressingReader(f, on_plain=plain.update)
            reader.drain()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        raise ImageError(f"{path}: corrupt compressed stream ({e})") from None
    return path, "sha256:" + plain.hexdigest()


def run(args, store: Store) -> int:
    names = [parse_new_name(args.name).name] if args.name else []
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    image_config: dict = {}
    apply_changes(image_config, args.change)
    progress = CliProgress(args.quiet)
    try:
        with store.adding() as space:
            if args.source != "-" and os.path.isdir(args.source):
                blob, diff_id = _layer_from_directory(args.source, space)
            elif args.source == "-" or os.path.isfile(args.source):
                blob, diff_id = _layer_from_tarball(None if args.source == "-" else args.source,
                                                    space)
            else:
                raise ImageError(f"{args.source}: no such file or directory")
            host = Platform.host()
            config = {
                "architecture": host.architecture, "os": host.os, "created": now,
                "config": image_config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": now, "created_by": f"pyunion import {args.source}",
                             "comment": args.message or f"Imported from {args.source}"}],
            }
            if host.variant and host.architecture == "arm":
                config["variant"] = host.variant
            config_bytes = json.dumps(config, separators=(",", ":")).encode()
            layer = LayerSpec(os.path.basename(blob), mt.OCI_LAYER, None, None, diff_id)
            spec = ImageSpec(config_bytes, config, [layer], names)
            source = DirectorySource(os.path.dirname(os.path.abspath(blob)))
            image_id = ImageAdder(store, space, progress).add_image(spec, source, args.source)
    except BaseException:
        progress.close()
        store.collect_garbage(blocking=False)
        raise
    progress.close()
    print(image_id)
    return 0
