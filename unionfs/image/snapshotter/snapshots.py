"""containerd's snapshots, kept in pyunion's store: the semantics of containerd's overlayfs
snapshotter, with pyunion mounting the stacks.

On disk, ``STORE/snapshots/DIR/fs`` is a snapshot's content (the upper directory while it is
active, a layer once committed) and ``STORE/snapshots/DIR/work`` its workdir; ``DIR`` is a
random name recorded in the ``snapshotter_snapshots`` table of the store's database. A
directory is made (and synced) before its row is written, a snapshot's content is synced before
its commit is, and a removed snapshot's row is deleted before its directory, so a call killed
half way leaves at most a directory without a row, which ``cleanup`` deletes; nothing a row
names is ever missing. Keys are containerd's (its metadata store already puts the namespace
into them).

Mounts, as containerd's overlayfs snapshotter gives them:

* a snapshot without parent: a bind mount of its ``fs`` (read-only for a view);
* a view of one committed layer: a read-only bind mount of that layer;
* otherwise the type ``fuse3.pyunion-overlayfs`` with ``lowerdir=`` (top-most first) and, for
  an active snapshot, ``upperdir=``/``workdir=``. containerd runs ``mount.fuse3 SOURCE TARGET
  -o OPTIONS -t pyunion-overlayfs`` for it, and ``mount.fuse3`` runs ``pyunion-overlayfs
  SOURCE TARGET -o OPTIONS``, which is ``mount.pyunion``'s overlayfs form (``fuse3.pyunion``
  would run ``pyunion``, the image manager). ``pyunion-overlayfs`` must be on containerd's
  PATH.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field

from unionfs.image.errors import ImageError
from unionfs.image.store import Store, fsync_dir, syncfs
from unionfs.image.store.database import transaction

MOUNT_TYPE = "fuse3.pyunion-overlayfs"
MOUNT_SOURCE = "pyunion"
ACTIVE, VIEW, COMMITTED = "active", "view", "committed"

# A table of its own in the store's database, made where missing.
SCHEMA = """
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
"""


class SnapshotError(ImageError):
    """A refused call; ``code`` names the gRPC status containerd expects for it."""

    code = "UNKNOWN"


class NotFound(SnapshotError):
    code = "NOT_FOUND"


class AlreadyExists(SnapshotError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SnapshotError):
    code = "FAILED_PRECONDITION"


class InvalidArgument(SnapshotError):
    code = "INVALID_ARGUMENT"


@dataclass
class Info:
    key: str
    parent: str
    kind: str
    created: float
    updated: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Mount:
    type: str
    source: str
    options: list[str]


class Snapshots:
    """The snapshots of one store. Calls changing the table hold ``lock`` (callers in other
    threads hold it around reads too: the store's sqlite connection is shared)."""

    def __init__(self, store: Store, share_layers: bool = False) -> None:
        self.store = store
        self.share_layers = share_layers
        self.dir = os.path.join(store.root, "snapshots")
        self.lock = threading.RLock()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with self.lock, transaction(self.db):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)

    @property
    def db(self) -> sqlite3.Connection:
        return self.store.db

    # ------------------------------------------------------------------ queries

    def _row(self, key: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM snapshotter_snapshots WHERE key = ?",
                              (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key}: not found")
        return row

    def _fs(self, row: sqlite3.Row) -> str:
        return os.path.join(self.dir, row["dir"], "fs")

    def _chain(self, key: str) -> list[sqlite3.Row]:
        """The committed snapshots below ``key`` (its parent first, the base last)."""
        chain = []
        while key:
            row = self._row(key)
            chain.append(row)
            key = row["parent"] or ""
        return chain

    @staticmethod
    def _info(row: sqlite3.Row) -> Info:
        return Info(key=row["key"], parent=row["parent"] or "", kind=row["kind"],
                    created=row["created"], updated=row["updated"],
                    labels=json.loads(row["labels"]))

    def stat(self, key: str) -> Info:
        return self._info(self._row(key))

    def list(self) -> list[Info]:
        rows = self.db.execute("SELECT * FROM snapshotter_snapshots ORDER BY created")
        return [self._info(row) for row in rows]

    def mounts(self, key: str) -> list[Mount]:
        row = self._row(key)
        if row["kind"] == COMMITTED:
            raise FailedPrecondition(f"snapshot {key} is committed: it has no mounts")
        lowers = [self._fs(r) for r in self._chain(row["parent"] or "")]
        fs = self._fs(row)
        if not lowers:  # (a view without parent: of an empty directory, as containerd's)
            return [Mount("bind", fs, ["rbind", "rw" if row["kind"] == ACTIVE else "ro"])]
        if row["kind"] == VIEW and len(lowers) == 1:
            return [Mount("bind", lowers[0], ["rbind", "ro"])]
        if row["kind"] == VIEW:
            return [Mount(MOUNT_TYPE, MOUNT_SOURCE, [f"lowerdir={':'.join(lowers)}"])]
        work = os.path.join(self.dir, row["dir"], "work")
        return [Mount(MOUNT_TYPE, MOUNT_SOURCE, [
            f"lowerdir={':'.join(lowers)}", f"upperdir={fs}", f"workdir={work}"])]

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) of the snapshot's own content: its upper while active, as recorded
        at commit once committed."""
        row = self._row(key)
        if row["kind"] == COMMITTED and row["size"] is not None:
            return row["size"], row["inodes"]
        if row["kind"] == VIEW:
            return 0, 0
        return disk_usage(self._fs(row))

    # ------------------------------------------------------------------ changes

    def prepare(self, key: str, parent: str, labels: dict[str, str],
                kind: str = ACTIVE) -> list[Mount]:
        if not key:
            raise InvalidArgument("a snapshot needs a key")
        with self.lock:
            if parent:
                parent_row = self._row(parent)
                if parent_row["kind"] != COMMITTED:
                    raise InvalidArgument(f"parent {parent} is not committed")
            name = secrets.token_hex(12)
            base = os.path.join(self.dir, name)
            os.mkdir(base, 0o700)
            os.mkdir(os.path.join(base, "fs"), 0o755)
            if kind == ACTIVE:
                os.mkdir(os.path.join(base, "work"), 0o700)
            fsync_dir(base)
            fsync_dir(self.dir)  # the directory is on disk before a row names it
            now = time.time()
            try:
                with transaction(self.db):
                    self.db.execute(
                        "INSERT INTO snapshotter_snapshots (key, dir, parent, kind, labels, "
                        "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, name, parent or None, kind, json.dumps(labels), now, now))
            except sqlite3.IntegrityError:
                shutil.rmtree(base, ignore_errors=True)
                raise AlreadyExists(f"snapshot {key}: already exists") from None
            return self.mounts(key)

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        with self.lock:
            row = self._row(key)
            if row["kind"] != ACTIVE:
                raise FailedPrecondition(f"snapshot {key} is not active")
            if self.db.execute("SELECT 1 FROM snapshotter_snapshots WHERE key = ?",
                               (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name}: already exists")
            size, inodes = disk_usage(self._fs(row))
            chain_id = unpacked_chain_id(key)
            if chain_id and self.share_layers:
                self._share_with_store(row, chain_id)
            syncfs(self._fs(row))  # the layer's content is on disk before it is committed
            merged = {**json.loads(row["labels"]), **labels}
            try:
                with transaction(self.db):
                    self.db.execute(
                        "UPDATE snapshotter_snapshots SET key = ?, kind = ?, labels = ?, "
                        "updated = ?, size = ?, inodes = ?, chain_id = ? WHERE key = ?",
                        (name, COMMITTED, json.dumps(merged), time.time(), size, inodes,
                         chain_id, key))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {name}: already exists") from None
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(os.path.join(self.dir, row["dir"], "work"))

    def _share_with_store(self, row: sqlite3.Row, chain_id: str) -> None:
        """Where pyunion's image store has this layer (same chain id, on the same parent
        chain, unpacked in the same form), the snapshot's content becomes hard links to the
        store's files, so that an image pulled by ``ctr`` and by ``pyunion pull`` is stored
        once. Links, not the store's directory itself: ``pyunion rmi`` of the image then
        frees nothing that a snapshot still uses. The swap is atomic (RENAME_EXCHANGE)."""
        layer = self.db.execute("SELECT parent, whiteout_format FROM layers WHERE chain_id = ?",
                                (chain_id,)).fetchone()
        if layer is None or layer["whiteout_format"] != "overlay" or \
                self.store.records_owners or not self.store.layer_recorded(chain_id):
            return
        parent_chain = None
        if row["parent"]:
            parent_chain = self._row(row["parent"])["chain_id"]
            if parent_chain is None:
                return
        if layer["parent"] != parent_chain:
            return
        base = os.path.join(self.dir, row["dir"])
        linked = os.path.join(base, "linked")
        try:
            subprocess.run(["cp", "-a", "--link", f"{self.store.layer_path(chain_id)}/.",
                            linked], check=True, capture_output=True)
            _exchange(linked, os.path.join(base, "fs"))
        except (OSError, subprocess.CalledProcessError):
            pass  # the snapshot keeps its own copy
        shutil.rmtree(linked, ignore_errors=True)

    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> Info:
        """``paths``: containerd's field mask (``labels``, ``labels.KEY``); none: all labels."""
        with self.lock:
            row = self._row(key)
            current = json.loads(row["labels"])
            if not paths:
                current = dict(labels)
            for path in paths:
                if path == "labels":
                    current = dict(labels)
                elif path.startswith("labels."):
                    label = path.removeprefix("labels.")
                    if label in labels:
                        current[label] = labels[label]
                    else:
                        current.pop(label, None)
                else:
                    raise InvalidArgument(f"cannot update field {path!r} of a snapshot")
            with transaction(self.db):
                self.db.execute("UPDATE snapshotter_snapshots SET labels = ?, updated = ? "
                                "WHERE key = ?", (json.dumps(current), time.time(), key))
            return self.stat(key)

    def remove(self, key: str) -> None:
        with self.lock:
            row = self._row(key)
            child = self.db.execute("SELECT key FROM snapshotter_snapshots WHERE parent = ? "
                                    "LIMIT 1", (key,)).fetchone()
            if child is not None:
                raise FailedPrecondition(f"snapshot {key} has children ({child['key']})")
            with transaction(self.db):
                self.db.execute("DELETE FROM snapshotter_snapshots WHERE key = ?", (key,))
            self.store._remove_tree(os.path.join(self.dir, row["dir"]))

    def cleanup(self) -> list[str]:
        """Deletes directories without a row (calls killed half way); returns their names."""
        with self.lock:
            known = {r[0] for r in self.db.execute("SELECT dir FROM snapshotter_snapshots")}
            removed = [name for name in os.listdir(self.dir) if name not in known]
            for name in removed:
                self.store._remove_tree(os.path.join(self.dir, name))
            return removed


def unpacked_chain_id(key: str) -> str | None:
    """The chain id in the key of a snapshot that containerd unpacks a layer into
    (``[NAMESPACE/ID/]extract-UNIQUE sha256:CHAINID``, containerd's UnpackKeyFormat)."""
    name = key.rsplit("/", 1)[-1]
    prefix, _, chain_id = name.partition(" ")
    if prefix.startswith("extract-") and chain_id.startswith("sha256:") and \
            len(chain_id) == len("sha256:") + 64:
        return chain_id
    return None


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: str, b: str) -> None:
    """Swaps two paths atomically (renameat2 with RENAME_EXCHANGE)."""
    if _libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


def disk_usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks, each hard-linked file once) and inodes below ``path``, as
    containerd's overlayfs snapshotter counts them."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (".", *dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
    return size, len(seen)

