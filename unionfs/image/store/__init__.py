"""The content-addressed image store: a directory holding a database, blobs and layer dirs.

Layout under the store's root::

    db.sqlite              metadata (images, tags, layers, blobs, mounts), WAL mode
    blobs/sha256/<hex>     manifests, configs and layer blobs as received (compressed)
    layers/<hex>/          one unpacked layer per chain id, the directory pyunion mounts
    tmp/<name>/            one workspace per running command, locked by tmp/<name>.lock
    locks/                 store.lock (shared while adding, exclusive while deleting),
                           layer-<hex>.lock (one unpacker per layer)

A file on disk is trusted only once a database row names it; every file is written in a
workspace and renamed into place complete. Deletions happen only under the exclusive store lock,
which no command that is adding content holds, so nothing is deleted that another command is
about to use.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from unionfs.fs.lazy_layout import records_dir
from unionfs.image.daemons import mount_is_live
from unionfs.image.errors import ImageError
from unionfs.image.limits import Limits
from unionfs.image.store import database
from unionfs.image.store.locks import FileLock, is_unlocked, locked

_libc = ctypes.CDLL(None, use_errno=True)


def default_root() -> str:
    explicit = os.environ.get("PYUNION_ROOT")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/var/lib/pyunion"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(data, "pyunion")


def syncfs(path: str) -> None:
    """Flushes the filesystem holding ``path`` (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_hex(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64 or not all(
            c in "0123456789abcdef" for c in hex_part):
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return hex_part


@dataclass
class Workspace:
    """A private scratch directory of one command, removed when the command ends."""

    path: str

    def new_path(self, name: str) -> str:
        return os.path.join(self.path, name)


class Store:
    def __init__(self, root: str, limits: Limits | None = None) -> None:
        self.root = os.path.abspath(root)
        self.limits = limits or Limits.from_environment()
        self.whiteout_format = "overlay" if os.geteuid() == 0 else "oci"
        self._db: sqlite3.Connection | None = None
        self._write_lock = threading.RLock()  # one connection, shared by worker threads

    @property
    def records_owners(self) -> bool:
        """An ordinary user's store: layer files are the user's, their true owners, modes
        and device nodes are recorded in user.containers.override_stat (unionfs.fs.override)
        and mounts show those (``-o override_stat``)."""
        return os.geteuid() != 0

    # ------------------------------------------------------------------ paths

    @property
    def blobs_dir(self) -> str:
        return os.path.join(self.root, "blobs", "sha256")

    @property
    def layers_dir(self) -> str:
        return os.path.join(self.root, "layers")

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    @property
    def locks_dir(self) -> str:
        return os.path.join(self.root, "locks")

    @property
    def store_lock_path(self) -> str:
        """Shared while a command adds content, exclusive while garbage is collected."""
        return os.path.join(self.locks_dir, "store.lock")

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, digest_hex(digest))

    def layer_path(self, chain_id: str) -> str:
        return os.path.join(self.layers_dir, digest_hex(chain_id))

    def layer_recorded(self, chain_id: str) -> bool:
        """Whether the layer is unpacked and recorded (a row and its directory)."""
        row = self.db.execute("SELECT 1 FROM layers WHERE chain_id = ?", (chain_id,)).fetchone()
        return row is not None and os.path.isdir(self.layer_path(chain_id))

    # ------------------------------------------------------------------ opening

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._create_dirs()
            # Switching to WAL and migrating take locks that sqlite does not wait for (its
            # busy timeout does not cover them), so processes open the database one at a time.
            with locked(os.path.join(self.locks_dir, "database.lock")):
                self._db = database.connect(os.path.join(self.root, "db.sqlite"))
        return self._db

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.root, "db.sqlite"))

    def _create_dirs(self) -> None:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for path in (self.blobs_dir, self.layers_dir, self.tmp_dir, self.locks_dir):
                os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ImageError(f"cannot create the store at {self.root}: {e.strerror}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, database.transaction(self.db) as db:
            yield db

    # ------------------------------------------------------------------ locks and workspaces

    @contextlib.contextmanager
    def adding(self) -> Iterator[Workspace]:
        """Held while a command adds content: a shared store lock and a fresh workspace.

        Before it starts, leftovers of killed commands are cleaned if nobody else is busy;
        after it ends, what others freed meanwhile (an ``rmi`` during a ``load``), unless
        another command is still adding: the last one cleans.
        """
        self.collect_garbage(blocking=False)
        with self.adding_lock(), self.workspace() as space:
            yield space
        self.collect_garbage(blocking=False)

    def adding_lock(self) -> contextlib.AbstractContextManager:
        """The shared store lock alone: garbage collection waits while it is held."""
        _ = self.db
        return locked(self.store_lock_path, exclusive=False)

    @contextlib.contextmanager
    def workspace(self) -> Iterator[Workspace]:
        path = tempfile.mkdtemp(prefix=f"ws-{os.getpid()}-", dir=self.tmp_dir)
        owner = FileLock(path + ".lock")
        owner.acquire(exclusive=True)
        try:
            yield Workspace(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".lock")
            owner.release()

    def layer_lock(self, chain_id: str) -> contextlib.AbstractContextManager:
        return locked(os.path.join(self.locks_dir, f"layer-{digest_hex(chain_id)}.lock"),
                      remove_when_free=True)

    # ------------------------------------------------------------------ garbage collection

    def collect_garbage(self, *, blocking: bool) -> list[str]:
        """Deletes what no image (nor mount) references and what killed commands left.

        Runs only under the exclusive store lock. With ``blocking=False`` it gives up if
        another command is adding content (that command collects when it ends), but waits
        for a collection already running (it may have begun before this command's changes).
        Returns the chain ids of the layers deleted.
        """
        if not self.exists():
            return []  # nothing was ever stored here (a command failed before it began)
        lock = FileLock(self.store_lock_path)
        if not blocking:
            lock.acquire(exclusive=False)  # waits only for a running collection
        if not lock.acquire(exclusive=True, blocking=blocking):
            lock.release()
            return []
        try:
            self._clean_workspaces()
            self._forget_dead_mounts()
            deleted_layers, deleted_blobs = self._delete_unreferenced_rows()
            for chain_id in deleted_layers:
                self._remove_tree(self.layer_path(chain_id))
            for digest in deleted_blobs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.blob_path(digest))
            self._remove_unrecorded_files()
            self._remove_unrecorded_containers()
            self._remove_old_downloads()
            return deleted_layers
        finally:
            lock.release()

    def _delete_unreferenced_rows(self) -> tuple[list[str], list[str]]:
        with self.transaction() as db:
            layers = [r[0] for r in db.execute(
                "SELECT chain_id FROM layers WHERE chain_id NOT IN "
                "(SELECT chain_id FROM image_layers)")]
            blobs = [r[0] for r in db.execute(
                "SELECT digest FROM blobs WHERE digest NOT IN (SELECT id FROM images) "
                "AND digest NOT IN (SELECT manifest_digest FROM images) "
                "AND digest NOT IN (SELECT blob_digest FROM image_layers)")]
            db.executemany("DELETE FROM layers WHERE chain_id = ?", [(d,) for d in layers])
            db.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in blobs])
        return layers, blobs

    def _remove_unrecorded_files(self) -> None:
        """Layer dirs and blobs renamed into place by a command killed before it recorded them."""
        known_layers = {digest_hex(r[0]) for r in self.db.execute("SELECT chain_id FROM layers")}
        for name in os.listdir(self.layers_dir):
            if name not in known_layers:
                self._remove_tree(os.path.join(self.layers_dir, name))
        lazy_records = records_dir(self.layers_dir)  # of lazy layers (fs/lazy_layout.py)
        for name in os.listdir(lazy_records) if os.path.isdir(lazy_records) else []:
            if name.removesuffix(".json") not in known_layers:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(lazy_records, name))
        known_blobs = {digest_hex(r[0]) for r in self.db.execute("SELECT digest FROM blobs")}
        for name in os.listdir(self.blobs_dir):
            if name not in known_blobs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.blobs_dir, name))

    def _remove_unrecorded_containers(self) -> None:
        """Container directories whose record is gone (``rm`` killed half way)."""
        directory = os.path.join(self.root, "containers")
        if not os.path.isdir(directory):
            return
        known = {r[0] for r in self.db.execute("SELECT id FROM containers")}
        for name in os.listdir(directory):
            if name not in known:
                self._remove_tree(os.path.join(directory, name))

    def _remove_old_downloads(self, max_age: float = 7 * 86400) -> None:
        """Partial downloads are kept so that a pull can resume them, for a week."""
        directory = os.path.join(self.root, "downloads")
        if not os.path.isdir(directory):
            return
        now = time.time()
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime > max_age and is_unlocked(
                        path.removesuffix(".partial") + ".lock"):
                    os.unlink(path)

    def _clean_workspaces(self) -> None:
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if name.endswith(".lock"):
                # the lock of a workspace whose owner was killed after removing it
                owner = path.removesuffix(".lock")
                if not os.path.lexists(owner) and is_unlocked(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                continue
            if is_unlocked(path + ".lock"):
                self._remove_tree(path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + ".lock")

    def _remove_tree(self, path: str) -> None:
        """Removes a directory tree: renamed away first, so a half-removed tree is never seen
        under its name."""
        if not os.path.lexists(path):
            return
        trash = tempfile.mkdtemp(prefix="trash-", dir=self.tmp_dir)
        try:
            os.rename(path, os.path.join(trash, "x"))
        except OSError:
            trash_target = path
        else:
            trash_target = trash
        _make_removable(trash_target)
        shutil.rmtree(trash_target, ignore_errors=True)
        if os.path.lexists(trash):
            shutil.rmtree(trash, ignore_errors=True)

    def _forget_dead_mounts(self) -> None:
        rows = self.db.execute("SELECT mountpoint, pid FROM mounts").fetchall()
        dead = [(r["mountpoint"],) for r in rows if not mount_is_live(r["mountpoint"], r["pid"])]
        if dead:
            with self.transaction() as db:
                db.executemany("DELETE FROM mounts WHERE mountpoint = ?", dead)


def _make_removable(path: str) -> None:
    """Ordinary users may have unpacked read-only directories; make them writable to delete."""
    if os.geteuid() == 0 or not os.path.isdir(path):
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
