"""``pyunion save``: images to a docker-archive, an OCI archive or an OCI layout directory."""

from __future__ import annotations

import argparse

from unionfs.image.archive.save import ImageSaver, SavedImage
from unionfs.image.cli.common import image_names, resolve
from unionfs.image.lazy import refuse_incomplete
from unionfs.image.store import Store

HELP = "Save one or more images to a tar archive (streamed to stdout by default)"
EPILOG = """examples:
  pyunion save -o app.tar app:2.0                       docker-archive (docker load reads it)
  pyunion save --format oci-archive -o app.oci.tar app:2.0
  pyunion save --format oci-dir -o ./layout app:2.0     (umoci, skopeo oci: read it)
  pyunion save --format oci-dir --layer-format estargz -o ./layout app:2.0
"""


def register(commands) -> None:
    p = commands.add_parser("save", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="PATH", help="write to a file (or a directory "
                   "for oci-dir) instead of stdout")
    p.add_argument("--format", choices=("docker-archive", "oci-archive", "oci-dir"),
                   default="docker-archive")
    p.add_argument("--layer-format", choices=("stored", "estargz"), default="stored",
                   help="oci formats: the layers as stored (default), or rewritten as eStargz "
                        "(for lazy pulls once pushed)")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    chosen: dict[str, SavedImage] = {}
    for text in args.images:
        found = resolve(store, text)
        refuse_incomplete(store, found.image_id, "save")
        image = chosen.setdefault(found.image_id, SavedImage(found.image_id, []))
        names = [found.name] if found.name else image_names(store, found.image_id)
        image.names += [n for n in names if n not in image.names]
    ImageSaver(store).save(list(chosen.values()), args.format, args.output, args.layer_format)
    return 0
