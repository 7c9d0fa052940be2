"""``pyunion image prune``: delete dangling (untagged, unused) images."""

from __future__ import annotations

import sys

from unionfs.image.cli.common import image_users
from unionfs.image.cli.output import human_size
from unionfs.image.store import Store

HELP = "Remove dangling (untagged and unused) images"


def register(image_commands) -> None:
    p = image_commands.add_parser("prune", help=HELP, description=HELP,
                                  epilog="example:\n  pyunion image prune -f")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all images not in use, not just dangling ones")
    p.set_defaults(run=run)


def _layer_bytes(store: Store) -> int:
    row = store.db.execute("SELECT COALESCE(SUM(tar_size), 0) FROM layers").fetchone()
    return row[0]


def run(args, store: Store) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all dangling images.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    condition = "" if args.all else "WHERE id NOT IN (SELECT image_id FROM tags)"
    candidates = [r["id"] for r in store.db.execute(f"SELECT id FROM images {condition}")]
    victims = [i for i in candidates if not image_users(store, i)]
    before = _layer_bytes(store)
    with store.transaction() as db:
        for image_id in victims:
            db.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM repo_digests WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM image_layers WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
    store.collect_garbage(blocking=True)
    if victims:
        print("Deleted Images:")
        for image_id in victims:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {human_size(before - _layer_bytes(store))}")
    return 0
