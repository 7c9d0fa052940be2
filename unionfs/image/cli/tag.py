"""``pyunion tag``: another name for an image."""

from __future__ import annotations

import time

from unionfs.image import reference
from unionfs.image.cli.common import resolve
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"


def register(commands) -> None:
    p = commands.add_parser("tag", help=HELP, description=HELP,
                            epilog="example:\n  pyunion tag app:2.0 registry.local:5000/app:latest")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    image = resolve(store, args.source)
    target = reference.parse(args.target)
    if target.digest:
        raise ImageError(f"refusing to create a tag with a digest reference: {args.target}")
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                   (target.name, image.image_id, time.time()))
    return 0
