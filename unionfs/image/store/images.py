"""Rows of an image, and the parent links ``build`` records between its step images.

As docker has it: an image built on another has it as its parent; an untagged image with
children is an *intermediate* image (``images`` hides it, ``images -a`` shows it), an untagged
image without children is *dangling*; deleting an image deletes the untagged parents that no
other image or container needs any more, and an untagged image with children is never deleted
on its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def record_parent(db: sqlite3.Connection, image_id: str, parent_id: str) -> None:
    """Notes that ``image_id`` was built on ``parent_id`` (the first parent recorded stays:
    a cached step's image keeps the parent it was made on)."""
    if image_id != parent_id:
        db.execute("INSERT OR IGNORE INTO image_parents VALUES (?, ?)", (image_id, parent_id))


def parent_of(db: sqlite3.Connection, image_id: str) -> str | None:
    row = db.execute("SELECT parent_id FROM image_parents WHERE image_id = ?",
                     (image_id,)).fetchone()
    return row[0] if row else None


def has_children(db: sqlite3.Connection, image_id: str) -> bool:
    return db.execute("SELECT 1 FROM image_parents WHERE parent_id = ? LIMIT 1",
                      (image_id,)).fetchone() is not None


def parents_with_children(db: sqlite3.Connection) -> set[str]:
    """The ids of every image some other image was built on."""
    return {r[0] for r in db.execute("SELECT DISTINCT parent_id FROM image_parents")}


def is_tagged(db: sqlite3.Connection, image_id: str) -> bool:
    return db.execute("SELECT 1 FROM tags WHERE image_id = ? LIMIT 1",
                      (image_id,)).fetchone() is not None


def delete_rows(db: sqlite3.Connection, image_id: str) -> None:
    """Deletes an image's rows (its layers and blobs go with the next garbage collection once
    nothing else refers to them). Its children keep their parent link: an id that no longer
    names an image, as docker's does."""
    db.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
    db.execute("DELETE FROM repo_digests WHERE image_id = ?", (image_id,))
    db.execute("DELETE FROM image_layers WHERE image_id = ?", (image_id,))
    db.execute("DELETE FROM images WHERE id = ?", (image_id,))


def delete_with_parents(db: sqlite3.Connection, image_id: str,
                        in_use: Callable[[str], bool]) -> list[str]:
    """Deletes ``image_id``, then each untagged parent left without children that nothing
    uses (``in_use``: containers, mounts), up the chain; returns the ids deleted, in order."""
    deleted = []
    current: str | None = image_id
    while current is not None:
        parent = parent_of(db, current)
        delete_rows(db, current)
        deleted.append(current)
        if parent is None or not _exists(db, parent) or is_tagged(db, parent) \
                or has_children(db, parent) or in_use(parent):
            break
        current = parent
    return deleted


def _exists(db: sqlite3.Connection, image_id: str) -> bool:
    return db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is not None
