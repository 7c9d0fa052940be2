"""The store's metadata: one sqlite database in WAL mode, versioned, migrated in place.

Everything a command decides on is read from here; files on disk (blobs, layer directories) are
trusted only once a row names them. Writers take ``BEGIN IMMEDIATE`` so two processes never
interleave a read-then-write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from unionfs.image.errors import ImageError

# Each entry migrates from version i to i + 1. Never edit a released entry: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        media_type  TEXT NOT NULL,
        added       REAL NOT NULL
    );
    CREATE TABLE layers (
        chain_id         TEXT PRIMARY KEY,
        diff_id          TEXT NOT NULL,
        parent           TEXT,
        tar_size         INTEGER NOT NULL,
        entries          INTEGER NOT NULL,
        whiteout_format  TEXT NOT NULL,
        added            REAL NOT NULL
    );
    CREATE TABLE images (
        id                   TEXT PRIMARY KEY,
        manifest_digest      TEXT NOT NULL,
        manifest_media_type  TEXT NOT NULL,
        created              TEXT,
        os                   TEXT,
        architecture         TEXT,
        variant              TEXT,
        size                 INTEGER NOT NULL,
        added                REAL NOT NULL
    );
    CREATE TABLE image_layers (
        image_id     TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position     INTEGER NOT NULL,
        chain_id     TEXT NOT NULL REFERENCES layers(chain_id),
        diff_id      TEXT NOT NULL,
        blob_digest  TEXT NOT NULL,
        media_type   TEXT NOT NULL,
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_chain_id ON image_layers(chain_id);
    CREATE TABLE tags (
        name      TEXT PRIMARY KEY,
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        added     REAL NOT NULL
    );
    CREATE INDEX tags_image ON tags(image_id);
    CREATE TABLE repo_digests (
        name      TEXT PRIMARY KEY,
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE TABLE mounts (
        mountpoint  TEXT PRIMARY KEY,
        image_id    TEXT NOT NULL REFERENCES images(id),
        pid         INTEGER NOT NULL,
        started     REAL NOT NULL
    );
    """,
    """
    CREATE TABLE containers (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        image_id     TEXT NOT NULL REFERENCES images(id),
        image_name   TEXT NOT NULL,
        created      REAL NOT NULL,
        spec         TEXT NOT NULL,
        state        TEXT NOT NULL,
        pid          INTEGER,
        monitor_pid  INTEGER,
        exit_code    INTEGER,
        started      REAL,
        finished     REAL,
        mountpoint   TEXT,
        mount_pid    INTEGER
    );
    CREATE INDEX containers_image ON containers(image_id);
    """,
    # The snapshotter's table (unionfs/image/snapshotter/). Stores it served before this
    # migration have the table without ``mount_pid`` (it made the table itself): hence IF NOT
    # EXISTS, and the column added separately.
    """
    CREATE TABLE IF NOT EXISTS snapshotter_snapshots (
        key         TEXT PRIMARY KEY,
        dir         TEXT NOT NULL UNIQUE,
        parent      TEXT REFERENCES snapshotter_snapshots(key),
        kind        TEXT NOT NULL,
        labels      TEXT NOT NULL,
        created     REAL NOT NULL,
        updated     REAL NOT NULL,
        size        INTEGER,
        inodes      INTEGER,
        chain_id    TEXT
    );
    CREATE INDEX IF NOT EXISTS snapshotter_snapshots_parent ON snapshotter_snapshots(parent);
    ALTER TABLE snapshotter_snapshots ADD COLUMN mount_pid INTEGER;
    """,
    # build's cache (unionfs/image/build/cache.py): a step's image by its parent and
    # instruction. Stores that built before this migration have the table already.
    """
    CREATE TABLE IF NOT EXISTS build_cache (
        key       TEXT PRIMARY KEY,
        image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        added     REAL NOT NULL
    );
    """,
    # build's parent links (unionfs/image/store/images.py): an untagged image with children
    # is an intermediate image, hidden from `images` as docker hides it.
    """
    CREATE TABLE image_parents (
        image_id   TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        parent_id  TEXT NOT NULL
    );
    CREATE INDEX image_parents_parent ON image_parents(parent_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    """Opens (creating and migrating as needed) the database at ``path``."""
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db)
    except sqlite3.DatabaseError as e:
        raise ImageError(f"store database {path}: {e}") from None
    return db


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise ImageError(f"the store's schema version {version} is newer than this pyunion "
                         f"understands ({SCHEMA_VERSION}); upgrade pyunion")
    with transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, taken at once (``BEGIN IMMEDIATE``) and committed or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
