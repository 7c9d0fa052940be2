"""Lazy lower files: the data of a file of an eStargz layer pulled with ``pull --lazy``.

Such a layer's directory holds the whole tree from the start (``unionfs.image.lazy``): every
regular file with content is a sparse placeholder of the right size and attributes, marked
with the ``MARK`` xattr (private: never shown through the mount), as is the layer's root. Its
layer has a record ``<store>/lazy/<chain hex>.json`` beside the store's ``layers/`` (where to
fetch the blob from, and each file's chunks: their byte ranges in the blob and sha256).

``ensure_present`` is called before a lower file's data is first used (open, a read without
open, copy-up). For a marked file it fetches the file's gzip members with one HTTP Range
request, together with the files that follow it in the blob within ``READAHEAD`` bytes and
still wait (a directory's files are neighbours in the tar and often used together), checks
each chunk against its digest before a byte is written, writes the placeholders, flushes the
filesystem once, then clears their marks; from then on each is an ordinary lower file
(passthrough and the rest work unchanged). A registry that does not answer within the mount's
``lazy_timeout`` makes the open fail with EIO, never hang.

``complete_in_background``, a task of the mount's loop, starts each lazy layer's prefetch and
then, while no file is being fetched on demand, downloads each lazy layer's blob at the
mount's ``lazy_rate`` and makes the layer an ordinary one (``unionfs.image.lazy``). With
``open_log``, the path of each lower file whose data is used is logged once
(``push --prefetch-from``).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import importlib
import json
import logging
import os
import stat
import weakref
from dataclasses import dataclass, field

import pyfuse3
import trio

from unionfs.fs import offload
from unionfs.fs.inodes import Node
from unionfs.fs.lazy_layout import LAYER_MARK, MARK, fill_placeholder, record_path
from unionfs.fs.state import UnionFS

READAHEAD = 512 << 10  # compressed bytes after a file whose whole files come with it
READAHEAD_FILES = 64
DEFAULT_RATE = 4 << 20  # bytes a second at which the rest of a lazy layer follows
QUIET = 1.0  # seconds without a file fetched on demand before the background goes on
_FREE = trio.Lock()
log = logging.getLogger("pyunion")


@dataclass
class LazyLayer:
    record: dict
    root: str  # the layer directory
    locks: dict[str, trio.Lock] = field(default_factory=dict)
    client: object | None = None  # a RegistryClient, made on first use (in the event loop)
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, name)

    def __post_init__(self) -> None:
        self.spans = sorted((c[0][0], c[-1][1], name)
                            for name, c in self.record["files"].items() if c)

    async def _client(self):
        from unionfs.image.registry.client import RegistryClient

        if self.client is None:
            self.client = RegistryClient(self.record["registry"],
                                         insecure=self.record.get("insecure", False))
        return self.client

    def _batch(self, name: str) -> list[str]:
        """``name`` and the files after it in the blob that end within ``READAHEAD`` bytes
        of its start and still wait for their data: fetched with it, in one request (the
        files of a directory are neighbours in the tar, and often used together)."""
        chunks = self.record["files"][name]
        limit = chunks[0][0] + READAHEAD
        batch = [name]
        at = bisect.bisect_right(self.spans, (chunks[-1][1], -1, ""))
        for _start, end, other in self.spans[at:]:
            if end > limit or len(batch) >= READAHEAD_FILES:
                break
            if not self.locks.get(other, _FREE).locked() and \
                    _mark(os.path.join(self.root, other)) == other:
                batch.append(other)
        return batch

    async def fetch(self, real: str, name: str) -> None:
        """Fills the placeholder ``real`` with the file ``name``'s verified chunks (and the
        placeholders of the files ``_batch`` adds, from the same request)."""
        from unionfs.image.archive.estargz import Chunk, EstargzError, chunk_bytes
        from unionfs.image.registry.client import RegistryError

        batch = self._batch(name)
        files = {n: [Chunk(*c) for c in self.record["files"][n]] for n in batch}
        start = files[name][0].start
        end = max(chunks[-1].end for chunks in files.values())
        client = await self._client()
        path = f"/v2/{self.record['repository']}/blobs/{self.record['digest']}"
        scope = f"repository:{self.record['repository']}:pull"
        try:
            async with client.request("GET", path, scope=scope, ok=(206,),  # type: ignore[attr-defined]
                                      headers={"Range": f"bytes={start}-{end - 1}"}) as answer:
                raw = bytearray()
                async for piece in answer.aiter_bytes(1 << 20):
                    raw += piece
                    if len(raw) > end - start:
                        break
            raw = raw[:end - start]
            pieces = [chunk_bytes(bytes(raw[c.start - start:c.end - start]), c)
                      for c in files[name]]
        except (RegistryError, EstargzError, OSError) as e:
            log.warning("lazy file %s of %s: %s", name, self.record["digest"][:19], e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:  # httpx's stream errors: the registry went away
            log.warning("lazy file %s of %s: %s", name, self.record["digest"][:19],
                        e or type(e).__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        written = [real]
        fill_placeholder(real, files[name], pieces)
        for other in batch[1:]:
            path = os.path.join(self.root, other)
            try:
                fill_placeholder(path, files[other], [
                    chunk_bytes(bytes(raw[c.start - start:c.end - start]), c)
                    for c in files[other]])
                written.append(path)
            except (EstargzError, OSError) as e:  # fetched again when it is opened
                log.warning("lazy file %s (read ahead): %s", other, e)
        _syncfs(self.root)  # one flush for the batch, before any mark goes
        for path in written:
            with contextlib.suppress(OSError):  # ENODATA: written by another meanwhile
                os.removexattr(path, MARK, follow_symlinks=False)


    async def prefetch(self, timeout: float) -> None:
        """Fetches the files the image's builder placed before the prefetch landmark (a
        system task started at the layer's first use; failures are only logged: each file
        is fetched again when it is opened)."""
        try:
            for name in self.record.get("prefetch", []):
                real = os.path.join(self.root, name)
                async with self.locks.setdefault(name, trio.Lock()):
                    if _mark(real) != name:
                        continue
                    with trio.move_on_after(timeout) as scope:
                        await self.fetch(real, name)
                    if scope.cancelled_caught:
                        return
        except Exception as e:  # noqa: BLE001 - a system task must not end the mount
            log.warning("prefetch of %s stopped: %s", self.record["digest"][:19],
                        e or type(e).__name__)


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)


_layers: weakref.WeakKeyDictionary[UnionFS, dict[int, LazyLayer | None]] = \
    weakref.WeakKeyDictionary()
_lazy_roots: weakref.WeakKeyDictionary[UnionFS, dict[int, bool]] = weakref.WeakKeyDictionary()
_demand: weakref.WeakKeyDictionary[UnionFS, float] = weakref.WeakKeyDictionary()


def _is_lazy(fs: UnionFS, layer: int) -> bool:
    """Whether the layer is a lazy one (its root marked): one getxattr, once a mount."""
    known = _lazy_roots.setdefault(fs, {})
    if layer not in known:
        root = fs.stack.roots[layer]
        known[layer] = root is not None and _mark(root) == LAYER_MARK
    return known[layer]


def _lazy_layer(fs: UnionFS, layer: int) -> LazyLayer | None:
    """The lazy layer with its record, read on the first need of it: a file still missing,
    the prefetch, the background fetch. (The record of a large layer is a few MB of JSON,
    tens of ms that a mount whose files are all here, as a second container's, never
    spends while it starts.)"""
    known = _layers.setdefault(fs, {})
    if layer not in known:
        root = fs.stack.roots[layer]
        known[layer] = None
        if root is not None and _is_lazy(fs, layer):  # a lazy layer of a store
            try:
                with open(record_path(root)) as f:
                    known[layer] = LazyLayer(json.load(f), root)
            except (OSError, ValueError):
                pass
            found = known[layer]
            if found is not None and found.record.get("prefetch"):
                trio.lowlevel.spawn_system_task(found.prefetch, fs.config.lazy_timeout)
    return known[layer]


def _has_prefetch(fs: UnionFS, layer: int) -> bool:
    """Whether the layer's blob names files to prefetch: its ``.prefetch.landmark`` (with
    none, the blob leads with ``.no.prefetch.landmark``)."""
    root = fs.stack.roots[layer]
    return root is not None and os.path.lexists(os.path.join(root, ".prefetch.landmark"))


class _Throttle:
    """Keeps a background download to ``rate`` bytes a second, and holds it while files are
    being fetched on demand (until ``QUIET`` seconds have passed without one)."""

    def __init__(self, fs: UnionFS, rate: int) -> None:
        self.fs, self.rate = fs, rate
        self.due = trio.current_time()

    async def __call__(self, nbytes: int) -> None:
        while (wait := _demand.get(self.fs, -QUIET) + QUIET - trio.current_time()) > 0:
            await trio.sleep(wait)
        self.due = max(self.due, trio.current_time()) + nbytes / self.rate
        await trio.sleep_until(self.due)


async def complete_in_background(fs: UnionFS) -> None:
    """The mount's task for the rest of its lazy layers (started with the loop, cancelled
    with it: nothing outlives the mount). Each layer's prefetch starts at once; then, after
    ``QUIET`` seconds without a file fetched on demand, each layer's blob follows at the
    mount's ``lazy_rate`` (or the one its pull recorded, or ``DEFAULT_RATE``) and the layer
    becomes an ordinary one (``unionfs.image.lazy.complete_in_background``). A failure is
    logged and leaves the layer lazy, as does a mount that ends first (the download so far
    is kept in the store, resumed by the next mount or pull). Until the quiet time is over,
    the mount reads no record but of a layer with files to prefetch."""
    lazy_layers = [i for i in range(len(fs.stack.roots)) if _is_lazy(fs, i)]
    if not lazy_layers:
        return
    _demand[fs] = trio.current_time()  # (the mount's first reads come first)
    for i in lazy_layers:
        if _has_prefetch(fs, i):
            _lazy_layer(fs, i)  # (starts its prefetch)
    for i in lazy_layers:
        await _Throttle(fs, DEFAULT_RATE)(0)  # (the quiet time)
        lazy = _lazy_layer(fs, i)
        if lazy is None:
            continue
        rate = fs.config.lazy_rate
        if rate is None:
            rate = int(lazy.record.get("rate", DEFAULT_RATE))
        if rate <= 0:
            continue
        throttle = _Throttle(fs, rate)
        await throttle(0)
        try:
            complete_layer = await _background_code()
            if await complete_layer(lazy.root, lazy.record, await lazy._client(), throttle):
                log.info("lazy layer %s: complete", lazy.record["digest"][:19])
        except Exception as e:  # noqa: BLE001 - the mount goes on; the layer stays lazy
            log.warning("the background fetch of %s stopped: %s", lazy.record["digest"][:19],
                        e or type(e).__name__)


async def _background_code():
    """``unionfs.image.lazy.complete_in_background``: that module brings the store's and the
    pull's code, 0.1-0.2 s of imports that would hold the loop (and every request of a
    starting container) if done in it at mount; imported in one of the daemon's worker
    threads (``offload``: like ``trio.to_thread``'s default, not abandoned if the mount ends
    meanwhile; an import error raised here), once the mount's first reads are over."""
    module = await offload.run_sync(importlib.import_module, "unionfs.image.lazy")
    return module.complete_in_background


async def ensure_present(fs: UnionFS, node: Node) -> None:
    """Makes sure the lower file whose data ``node`` uses has its data (see the module)."""
    if node.kind != stat.S_IFREG or not node.data_in_lower or not node.lowers:
        return
    layer, path = node.lowers[0]
    if fs.config.open_log:
        _log_open(fs, path)
    if not _is_lazy(fs, layer):
        return
    real = fs.stack.real(layer, path)
    name = _mark(real)
    if name is None:  # here already
        return
    lazy = _lazy_layer(fs, layer)
    if lazy is None:
        log.warning("lazy file %s: its layer has no lazy record", name)
        raise pyfuse3.FUSEError(errno.EIO)
    if name not in lazy.record["files"]:
        log.warning("lazy file %s: not in its layer's record", name)
        raise pyfuse3.FUSEError(errno.EIO)
    lock = lazy.locks.setdefault(name, trio.Lock())
    _demand[fs] = trio.current_time()
    async with lock:
        if _mark(real) is None:  # fetched while this open waited
            return
        with trio.move_on_after(fs.config.lazy_timeout) as scope:
            try:
                await lazy.fetch(real, name)
            finally:  # (the background waits QUIET seconds from the end of a long fetch)
                _demand[fs] = trio.current_time()
        if scope.cancelled_caught:
            log.warning("lazy file %s: the registry did not answer within %ss", name,
                        fs.config.lazy_timeout)
            raise pyfuse3.FUSEError(errno.EIO)


_opened: weakref.WeakKeyDictionary[UnionFS, set[str]] = weakref.WeakKeyDictionary()


def _log_open(fs: UnionFS, path: str) -> None:
    """Appends ``/path`` to the mount's ``open_log`` the first time the lower file is used."""
    seen = _opened.setdefault(fs, set())
    if path in seen or "\n" in path:  # (one path a line)
        return
    seen.add(path)
    assert fs.config.open_log is not None
    try:
        fd = os.open(fs.config.open_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, ("/" + path.lstrip("/")).encode("utf-8", "surrogateescape") + b"\n")
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("open_log %s: %s", fs.config.open_log, e.strerror)


def _mark(real: str) -> str | None:
    try:
        return os.getxattr(real, MARK, follow_symlinks=False).decode()
    except OSError:
        return None
