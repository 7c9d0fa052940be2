"""The snapshotter's table as a migration of the store's database: a store that the snapshotter
served before the migration existed (the table made by the snapshotter itself, schema version 2,
no ``mount_pid``) is migrated in place with its rows kept; a new store gets the table."""

from __future__ import annotations

import sqlite3

from unionfs.image.store import Store
from unionfs.image.store.database import MIGRATIONS, SCHEMA_VERSION

# The table as the snapshotter made it (CREATE TABLE IF NOT EXISTS at its start) before it
# became a migration: the released form, kept here to build an old store.
OLD_TABLE = """
CREATE TABLE IF NOT EXISTS snapshotter_snapshots (
    key TEXT PRIMARY KEY, dir TEXT NOT NULL UNIQUE,
    parent TEXT REFERENCES snapshotter_snapshots(key), kind TEXT NOT NULL,
    labels TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    size INTEGER, inodes INTEGER, chain_id TEXT
);
CREATE INDEX IF NOT EXISTS snapshotter_snapshots_parent ON snapshotter_snapshots(parent);
"""


def _columns(db: sqlite3.Connection) -> list[str]:
    return [r[1] for r in db.execute("PRAGMA table_info(snapshotter_snapshots)")]


def test_old_snapshotter_store_is_migrated_in_place(tmp_path):
    path = tmp_path / "db.sqlite"
    old = sqlite3.connect(path)
    for script in (*MIGRATIONS[:2], OLD_TABLE):
        old.executescript(script)
    old.execute("INSERT INTO snapshotter_snapshots VALUES "
                "('ns/1/base', 'd1', NULL, 'committed', '{}', 1, 1, 4096, 3, NULL)")
    old.execute("PRAGMA user_version=2")
    old.commit()
    old.close()

    db = Store(str(tmp_path)).db
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "mount_pid" in _columns(db)
    row = db.execute("SELECT * FROM snapshotter_snapshots").fetchone()
    assert (row["key"], row["dir"], row["size"], row["mount_pid"]) == ("ns/1/base", "d1",
                                                                      4096, None)


def test_new_store_has_the_table(tmp_path):
    db = Store(str(tmp_path)).db
    assert _columns(db)[-1] == "mount_pid"
    assert db.execute("SELECT count(*) FROM snapshotter_snapshots").fetchone()[0] == 0
