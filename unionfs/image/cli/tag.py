"""``pyunion tag``: another name for an image."""

from __future__ import annotations

import time

from unionfs.image import events, reference
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


def parse_new_name(text: str) -> reference.Reference:
    """A name to give: the reference grammar's, with docker's rule that a repository is
    lowercase (a first component in capitals is no registry host: the grammar would take
    ``UPPER/x`` for one only because of its capitals)."""
    target = reference.parse(text)
    domain = target.domain
    if domain.lower() != domain and not any(c in domain for c in ".:"):
        raise ImageError(f"invalid reference format: {text!r} (repository names must be "
                         "lowercase)")
    return target


def run(args, store: Store) -> int:
    image = resolve(store, args.source)
    target = parse_new_name(args.target)
    if target.digest:
        raise ImageError(f"refusing to create a tag with a digest reference: {args.target}")
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                   (target.name, image.image_id, time.time()))
    events.record(store, "image", "tag", image.image_id, name=target.short_name)
    return 0
