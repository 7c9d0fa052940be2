"""``pyunion rmi``: untag and delete images; layers go once no image uses them."""

from __future__ import annotations

import sys

from unionfs.image import events
from unionfs.image.cli.common import image_names, image_users, resolve, short_id, short_name
from unionfs.image.container.records import running_users_of_image
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store, images

HELP = "Remove one or more images"
EPILOG = """examples:
  pyunion rmi app:1.0                  untag; delete the image if that was its last tag
  pyunion rmi 3f2a                     by unique id prefix
  pyunion rmi -f $(pyunion images -qa) everything
"""


def register(commands) -> None:
    import argparse

    p = commands.add_parser("rmi", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true",
                   help="untag all names of an image given by id, and remove images in use "
                        "(their layers stay while in use)")
    p.set_defaults(run=run)


def remove_image(store: Store, text: str, force: bool) -> list[str]:
    """Untags or deletes one image; returns the lines to print."""
    found = resolve(store, text)
    image_id = found.image_id
    names = image_names(store, image_id)
    users = image_users(store, image_id)
    if found.name is not None and len(names) > 1:
        to_untag, delete = [found.name], False
    else:
        if found.name is None and len(names) > 1 and not force:
            raise Conflict(f"unable to delete {short_id(image_id)} (must be forced) - image is "
                           "referenced in multiple repositories")
        to_untag, delete = names, True
    running = running_users_of_image(store, image_id)
    if delete and running and found.name is None:
        raise Conflict(f"unable to delete {short_id(image_id)} (cannot be forced) - image is "
                       f"being used by running {', '.join(running)}")
    if delete and users:
        if not force:
            raise Conflict(f"unable to remove {text} (must be forced) - image "
                           f"{short_id(image_id)} is in use: {', '.join(users)}")
        delete = False  # untagged, kept while in use
    if delete and images.has_children(store.db, image_id):
        if not to_untag:
            raise Conflict(f"unable to delete {short_id(image_id)} (cannot be forced) - image "
                           "has dependent child images")
        delete = False  # untagged: an intermediate image now, as docker keeps it
    lines = [f"Untagged: {short_name(n)}" for n in to_untag]
    deleted: list[str] = []
    with store.transaction() as db:
        db.executemany("DELETE FROM tags WHERE name = ?", [(n,) for n in to_untag])
        if delete:
            deleted = images.delete_with_parents(
                db, image_id, lambda parent: bool(image_users(store, parent)))
    lines += [f"Deleted: {i}" for i in deleted]
    for name in to_untag:
        events.record(store, "image", "untag", image_id, name=short_name(name))
    for i in deleted:
        events.record(store, "image", "delete", i)
    return lines


def run(args, store: Store) -> int:
    status = 0
    for text in args.images:
        try:
            for line in remove_image(store, text, args.force):
                print(line)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    store.collect_garbage(blocking=False)
    return status
