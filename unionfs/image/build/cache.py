"""The build cache: a step's image by its parent image and its instruction.

A row maps the digest of (parent image id, the step's description) to the image the step made;
the description is the history text (with the ARG values a RUN sees) plus, for COPY/ADD, the
digest of the copied names, modes and contents. Rows live in the store's database (its table
is one of the store's migrations, ``store/database.py``) and go with
their image (``rmi``, ``image prune``): a cached step is always an image that still exists.
"""

from __future__ import annotations

import hashlib
import json
import time

from unionfs.image.store import Store


def key(parent: str | None, description: list[str]) -> str:
    return hashlib.sha256(json.dumps([parent or "scratch", *description]).encode()).hexdigest()


def lookup(store: Store, cache_key: str) -> str | None:
    row = store.db.execute("SELECT c.image_id FROM build_cache c JOIN images i "
                           "ON i.id = c.image_id WHERE c.key = ?", (cache_key,)).fetchone()
    return row[0] if row else None


def remember(store: Store, cache_key: str, image_id: str) -> None:
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO build_cache VALUES (?, ?, ?)",
                   (cache_key, image_id, time.time()))
