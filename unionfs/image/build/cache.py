"""The build cache: a step's image by its parent image and its instruction.

A row maps the digest of (parent image id, the step's description) to the image the step made;
the description is the history text (with the ARG values a RUN sees) plus, for COPY/ADD, the
digest of the copied names, modes and contents. Rows live in the store's database and go with
their image (``rmi``, ``image prune``): a cached step is always an image that still exists.
"""

from __future__ import annotations

import hashlib
import json
import time

from unionfs.image.store import Store

_TABLE = """CREATE TABLE IF NOT EXISTS build_cache (
    key       TEXT PRIMARY KEY,
    image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    added     REAL NOT NULL
)"""


def key(parent: str | None, description: list[str]) -> str:
    return hashlib.sha256(json.dumps([parent or "scratch", *description]).encode()).hexdigest()


_ready: set[str] = set()  # the stores whose table exists (checked once per process)


def _ensure(store: Store) -> None:
    if store.root in _ready:
        return
    exists = store.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = 'build_cache'").fetchone()
    if exists is None:
        with store.transaction() as db:
            db.execute(_TABLE)
    _ready.add(store.root)


def lookup(store: Store, cache_key: str) -> str | None:
    _ensure(store)
    row = store.db.execute("SELECT c.image_id FROM build_cache c JOIN images i "
                           "ON i.id = c.image_id WHERE c.key = ?", (cache_key,)).fetchone()
    return row[0] if row else None


def remember(store: Store, cache_key: str, image_id: str) -> None:
    _ensure(store)
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO build_cache VALUES (?, ?, ?)",
                   (cache_key, image_id, time.time()))
