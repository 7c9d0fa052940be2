"""``pyunion image prune``: delete dangling (untagged, unused) images."""

from __future__ import annotations

import sys

from unionfs.image import events
from unionfs.image.cli.common import image_names, image_users, short_name
from unionfs.image.cli.output import human_size
from unionfs.image.store import Store, images

HELP = "Remove dangling (untagged and unused) images"


def register(image_commands) -> None:
    p = image_commands.add_parser("prune", help=HELP, description=HELP,
                                  epilog="example:\n  pyunion image prune -f")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all images not in use, not just dangling ones")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all dangling images.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    _, victims, freed = prune_images(store, args.all)
    if victims:
        print("Deleted Images:")
        for image_id in victims:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


def prune_images(store: Store, all_images: bool) -> tuple[list[str], list[str], int]:
    """Deletes the dangling images (``all_images``: every image no container or mount
    uses): the names untagged, the ids deleted, the layer bytes freed."""
    def layer_bytes() -> int:
        return store.db.execute("SELECT COALESCE(SUM(tar_size), 0) FROM layers").fetchone()[0]

    condition = "" if all_images else "WHERE id NOT IN (SELECT image_id FROM tags)"
    candidates = [r["id"] for r in store.db.execute(f"SELECT id FROM images {condition}")]
    if not all_images:  # dangling: untagged and no image built on it
        with_children = images.parents_with_children(store.db)
        candidates = [i for i in candidates if i not in with_children]
    victims = [i for i in candidates if not image_users(store, i)]
    untagged = [short_name(n) for i in victims for n in image_names(store, i)]
    before = layer_bytes()
    deleted: list[str] = []
    with store.transaction() as db:
        for image_id in victims:
            if image_id in deleted:
                continue
            if all_images:
                images.delete_rows(db, image_id)
                deleted.append(image_id)
            else:  # and the intermediate images under it that nothing else needs
                deleted += images.delete_with_parents(
                    db, image_id, lambda parent: bool(image_users(store, parent)))
    for image_id in deleted:
        events.record(store, "image", "delete", image_id)
    store.collect_garbage(blocking=True)
    return untagged, deleted, before - layer_bytes()
