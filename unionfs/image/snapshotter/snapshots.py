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

Mounts, as containerd's overlayfs snapshotter gives them, except that a stack is mounted by
the snapshotter itself and handed out as a bind mount:

* a snapshot without parent: a bind mount of its ``fs`` (read-only for a view);
* a view of one committed layer: a read-only bind mount of that layer;
* otherwise the snapshotter keeps a pyunion mount of the stack at ``STORE/snapshots/DIR/merged``
  (``lowerdir`` top-most first, and for an active snapshot its ``fs`` as the upper; read-only
  for a view), made when the snapshot is prepared, and returns a bind mount of it. containerd
  mounts a container's rootfs twice (``ctr`` reads the image's ``/etc/passwd`` through a
  temporary mount, then the shim mounts it for runc): as bind mounts, neither starts a process
  and both share one daemon. The daemon is ``mount.pyunion``, one per mount as ``pyunion
  mount`` runs it, in its own session (a restart of the snapshotter leaves running containers
  alone) and started ahead of need (``DaemonsAhead``), so that a mount costs its FUSE
  handshake rather than a Python start. Its pid is recorded in the snapshot's row; a
  mount whose daemon is gone (a reboot, a kill) is made again at the next ``Prepare``/``Mounts``.
  ``Commit`` unmounts first (nothing writes the upper any more); ``Remove`` deletes the row
  and leaves the unmount and the deletion of the directory to a background thread (where
  ``Cleanup`` queues orphans too; the snapshotter's exit waits for it), so that ``ctr run
  --rm`` does not wait for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import secrets
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field

from unionfs import prestart
from unionfs.api import Mount as UnionMount
from unionfs.fs.options import MountError
from unionfs.image.daemons import (
    mount_is_live,
    mounted_points,
    process_alive,
    unmount_daemon,
    wait_exit,
)
from unionfs.image.errors import ImageError
from unionfs.image.snapshotter import sharing
from unionfs.image.store import Store, fsync_dir, syncfs
from unionfs.image.store.database import transaction

FSNAME = "pyunion"
ACTIVE, VIEW, COMMITTED = "active", "view", "committed"

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


class DaemonsAhead:
    """``mount.pyunion`` daemons started ahead of need (``unionfs.prestart``'s: each
    has imported pyfuse3 and trio and waits for its command line), so that a snapshot's mount
    costs its FUSE handshake (~15 ms) rather than a Python start (~0.2-0.4 s). More than one:
    ``ctr run`` after ``ctr run`` comes sooner than a daemon starts on a loaded machine. The
    oldest is used first; an unused one exits when the snapshotter does."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ready: list[prestart.WarmDaemon] = []
        self._lock = threading.Lock()  # also around unionfs.prestart's daemon of the next mount

    def start(self, union: UnionMount) -> None:
        """``union.start()`` with the oldest daemon (a cold start if there is none)."""
        try:
            with self._lock:
                if self._ready:
                    prestart.offer(self._ready.pop(0))
                union.start()
        finally:
            self.fill_in_background()

    def fill_in_background(self) -> None:
        threading.Thread(target=self._fill, daemon=True, name="daemons-ahead").start()

    def _fill(self) -> None:
        with self._lock:
            while len(self._ready) < self.size:
                try:
                    self._ready.append(prestart.WarmDaemon())
                except OSError:
                    return


class Snapshots:
    """The snapshots of one store. Calls changing the table hold ``lock`` (callers in other
    threads hold it around reads too: the store's sqlite connection is shared). The table is
    part of the store's schema (a migration in unionfs/image/store/database.py)."""

    def __init__(self, store: Store, share_layers: bool = False, daemons_ahead: int = 2
                 ) -> None:
        self.store = store
        self.share_layers = share_layers
        self.dir = os.path.join(store.root, "snapshots")
        self.lock = threading.RLock()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.daemons_ahead = DaemonsAhead(daemons_ahead)
        self._daemons: dict[str, UnionMount] = {}  # snapshot dir -> the mount we started
        self._removals: queue.Queue[tuple[str, int | None]] = queue.Queue()
        self._pending: set[str] = set()  # directories queued or being removed
        self._pending_lock = threading.Lock()
        threading.Thread(target=self._remove_in_background, daemon=True,
                         name="snapshot-removal").start()
        self.daemons_ahead.fill_in_background()

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

    def _merged(self, row: sqlite3.Row) -> str:
        return os.path.join(self.dir, row["dir"], "merged")

    def _lowers(self, row: sqlite3.Row) -> list[str]:
        """The snapshot's committed layers, top-most first (overlayfs's lowerdir order)."""
        return [self._fs(r) for r in self._chain(row["parent"] or "")]

    @staticmethod
    def _is_stack(kind: str, lowers: list[str]) -> bool:
        """Whether a snapshot needs a pyunion mount (else a plain bind mount serves)."""
        return len(lowers) > (0 if kind == ACTIVE else 1)

    def mounts(self, key: str) -> list[Mount]:
        row = self._row(key)
        if row["kind"] == COMMITTED:
            raise FailedPrecondition(f"snapshot {key} is committed: it has no mounts")
        lowers = self._lowers(row)
        mode = "rw" if row["kind"] == ACTIVE else "ro"
        if not lowers:  # (a view without parent: of an empty directory, as containerd's)
            return [Mount("bind", self._fs(row), ["rbind", mode])]
        if not self._is_stack(row["kind"], lowers):
            return [Mount("bind", lowers[0], ["rbind", "ro"])]
        self._ensure_mounted(row, lowers)
        return [Mount("bind", self._merged(row), ["rbind", mode])]

    # ------------------------------------------------------------------ the pyunion mounts

    def _ensure_mounted(self, row: sqlite3.Row, lowers: list[str]) -> None:
        """Mounts the snapshot's stack at its ``merged`` unless its recorded daemon serves it
        already; a dead mount (its daemon killed, or a reboot) is taken away first."""
        point = self._merged(row)
        if row["mount_pid"] and mount_is_live(point, row["mount_pid"]):
            return
        self._forget_daemon(row["dir"])
        if point in mounted_points():
            subprocess.run(["umount", "-l", point], capture_output=True)
        pid = self._mount_stack(row["dir"], row["key"], row["kind"], lowers)
        with transaction(self.db):
            self.db.execute("UPDATE snapshotter_snapshots SET mount_pid = ? WHERE key = ?",
                            (pid, row["key"]))

    def _mount_stack(self, directory: str, key: str, kind: str, lowers: list[str]) -> int:
        """Mounts ``lowers`` (and for an active snapshot its ``fs`` as the upper) at
        ``DIR/merged``; returns the daemon's pid."""
        base = os.path.join(self.dir, directory)
        point = os.path.join(base, "merged")
        os.makedirs(point, mode=0o755, exist_ok=True)
        active = kind == ACTIVE
        union = UnionMount(lowers, os.path.join(base, "fs") if active else None, point,
                           workdir=os.path.join(base, "work") if active else None,
                           readonly=not active, options=[f"fsname={FSNAME}"])
        try:
            self.daemons_ahead.start(union)
        except MountError as e:
            raise ImageError(f"mounting snapshot {key} failed: {e}") from None
        assert union._proc is not None
        self._daemons[directory] = union
        return union._proc.pid

    def _forget_daemon(self, directory: str) -> None:
        """Reaps a daemon we started for ``directory`` once it has exited."""
        union = self._daemons.pop(directory, None)
        if union is not None and union._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                union._proc.wait(timeout=10)
            union._cleanup()

    def _unmount(self, directory: str, pid: int | None) -> None:
        """Unmounts ``STORE/snapshots/DIR/merged`` (flushed first) and waits for its daemon;
        ImageError if it is busy."""
        point = os.path.join(self.dir, directory, "merged")
        if point in mounted_points():
            if pid and mount_is_live(point, pid):
                with contextlib.suppress(OSError):
                    syncfs(point)
            unmount_daemon(point, pid, f"snapshot directory {directory}")
        self._forget_daemon(directory)

    def _discard(self, directory: str, pid: int | None) -> None:
        """Unmounts whatever is mounted in a snapshot directory that no row names any more
        (lazily if busy, the daemon killed if it does not exit) and deletes the directory."""
        base = os.path.join(self.dir, directory)
        try:
            self._unmount(directory, pid)
        except ImageError:
            subprocess.run(["umount", "-l", os.path.join(base, "merged")], capture_output=True)
            wait_exit(pid)
            if process_alive(pid, b"mount_helper"):  # still serving a detached mount
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                wait_exit(pid)
            self._forget_daemon(directory)
        for point in sorted((p for p in mounted_points() if p.startswith(base + os.sep)),
                            key=len, reverse=True):  # (none that we know of)
            subprocess.run(["umount", "-l", point], capture_output=True)
        self.store._remove_tree(base)

    def _queue_removal(self, directory: str, pid: int | None) -> None:
        with self._pending_lock:
            if directory in self._pending:
                return
            self._pending.add(directory)
        self._removals.put((directory, pid))

    def _remove_in_background(self) -> None:
        while True:
            directory, pid = self._removals.get()
            try:
                self._discard(directory, pid)
            except Exception:  # noqa: BLE001 (a failure leaves an orphan: Cleanup retries)
                pass
            finally:
                with self._pending_lock:
                    self._pending.discard(directory)
                self._removals.task_done()

    def wait_for_removals(self, timeout: float = 60) -> None:
        """Until the removals under way are done (or ``timeout``): at the snapshotter's exit."""
        deadline = time.monotonic() + timeout
        while self._removals.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

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
            if self.db.execute("SELECT 1 FROM snapshotter_snapshots WHERE key = ?",
                               (key,)).fetchone():
                raise AlreadyExists(f"snapshot {key}: already exists")
            lowers: list[str] = []
            if parent:
                parent_row = self._row(parent)
                if parent_row["kind"] != COMMITTED:
                    raise InvalidArgument(f"parent {parent} is not committed")
                lowers = [self._fs(r) for r in self._chain(parent)]
            name = secrets.token_hex(12)
            base = os.path.join(self.dir, name)
            os.mkdir(base, 0o700)
            os.mkdir(os.path.join(base, "fs"), 0o755)
            if kind == ACTIVE:
                os.mkdir(os.path.join(base, "work"), 0o700)
            fsync_dir(base)
            fsync_dir(self.dir)  # the directory is on disk before a row names it
            # mounted before the row is written, so that one transaction records both: a call
            # killed in between leaves a directory without a row, whose mount Cleanup undoes
            pid = None
            if self._is_stack(kind, lowers):
                try:
                    pid = self._mount_stack(name, key, kind, lowers)
                except ImageError:
                    self.store._remove_tree(base)
                    raise
            now = time.time()
            try:
                with transaction(self.db):
                    self.db.execute(
                        "INSERT INTO snapshotter_snapshots (key, dir, parent, kind, labels, "
                        "created, updated, mount_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, name, parent or None, kind, json.dumps(labels), now, now, pid))
            except sqlite3.IntegrityError:
                self._queue_removal(name, pid)
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
            self._unmount(row["dir"], row["mount_pid"])  # nothing writes the upper any more
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
                        "updated = ?, size = ?, inodes = ?, chain_id = ?, mount_pid = NULL "
                        "WHERE key = ?",
                        (name, COMMITTED, json.dumps(merged), time.time(), size, inodes,
                         chain_id, key))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {name}: already exists") from None
            for leftover in ("work", "merged"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(os.path.join(self.dir, row["dir"], leftover))

    def _share_with_store(self, row: sqlite3.Row, chain_id: str) -> None:
        """Where pyunion's image store has this layer (same chain id, on the same parent
        chain, unpacked in the same form), the snapshot's content becomes hard links to the
        store's files, so that an image pulled by ``ctr`` and by ``pyunion pull`` is stored
        once. Links, not the store's directory itself: ``pyunion rmi`` of the image then
        frees nothing that a snapshot still uses. The swap is atomic (RENAME_EXCHANGE).
        (The other direction, a pull linking a snapshot's files: sharing.py.)"""
        layer = self.db.execute("SELECT parent, whiteout_format FROM layers WHERE chain_id = ?",
                                (chain_id,)).fetchone()
        if layer is None or layer["whiteout_format"] != "overlay" or \
                not sharing.forms_match(self.store) or not self.store.layer_recorded(chain_id):
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
        if sharing.link_tree(self.store.layer_path(chain_id), linked):
            with contextlib.suppress(OSError):  # (else the snapshot keeps its own copy)
                _exchange(linked, os.path.join(base, "fs"))
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
            self._queue_removal(row["dir"], row["mount_pid"])

    def cleanup(self) -> list[str]:
        """Queues for removal the directories without a row (calls killed half way, removals
        that a restart interrupted) and returns their names. It does not wait for them:
        containerd's garbage collection calls it after every ``ctr run --rm``, and the calls
        after it would wait too."""
        with self.lock:
            known = {r[0] for r in self.db.execute("SELECT dir FROM snapshotter_snapshots")}
            with self._pending_lock:
                pending = set(self._pending)
            orphans = [name for name in os.listdir(self.dir)
                       if name not in known and name not in pending]
            for name in orphans:
                self._queue_removal(name, None)
            return orphans


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

