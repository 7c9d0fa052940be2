"""Lazy layers (``pull --lazy``): an eStargz layer made present from its TOC alone.

At pull, each eStargz layer's footer and TOC are fetched with Range requests and the TOC is
checked against the digest in the (verified) manifest. The layer directory is then made from
the TOC's entries, handed as tar members straight to the unpacker's writer (no tar is written
or parsed; whiteouts, opaque directories, owners, xattrs and the parents' attributes come out
exactly as for a full pull), except that each file with content is made sparse, of its size,
and marked with ``unionfs.fs.lazy_layout.MARK`` (``_PlaceholderWriter``). The record
``<store>/lazy/<chain hex>.json`` says where each file's chunks are; the mount fetches a file
on its first use (``unionfs.fs.lazy``).

The layer's blob is not in the store until the layer is complete (``complete_lazy_layer``:
by an ordinary pull, or by a mount's background fetch, ``complete_in_background``), so
``save`` and ``push`` of an image with an incomplete lazy layer are refused
(``refuse_incomplete``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from unionfs.fs.lazy_layout import LAYER_MARK, MARK, fill_placeholder, record_path
from unionfs.image import reference
from unionfs.image.archive import estargz
from unionfs.image.archive.compression import DecompressingReader
from unionfs.image.archive.formats import LayerSpec
from unionfs.image.archive.unpack import LayerDigests, LayerError, LayerWriter, normalize_name
from unionfs.image.errors import ImageError
from unionfs.image.progress import Progress
from unionfs.image.store import Store, Workspace, syncfs
from unionfs.image.store.adding import AddedLayer, ImageAdder

if TYPE_CHECKING:
    from unionfs.image.early import EarlyFetch

_TAR_TYPES = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
              "fifo": tarfile.FIFOTYPE}


class RangeIgnored(ImageError):
    """The registry answered a Range request with the whole blob."""


@dataclass
class LazyToc:
    toc_offset: int
    toc_json: bytes
    document: dict
    tar_size: int | None = None  # the uncompressed size its descriptor declares, if it does
    _files: dict[str, estargz.TocFile] | None = field(default=None, repr=False)

    def files(self) -> dict[str, estargz.TocFile]:
        """``estargz.files_of`` the TOC, worked out once (tens of ms for a large layer)."""
        if self._files is None:
            self._files = estargz.files_of(self.document, self.toc_offset)
        return self._files


def _members(toc: LazyToc) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Each entry of the TOC as the tar member a full pull's unpacker reads for it (a regular
    file's data None: it is not here), the TOC itself last (as in the blob)."""
    for entry in toc.document["entries"]:
        if not isinstance(entry, dict) or entry.get("type") not in _TAR_TYPES:
            continue
        info = tarfile.TarInfo(str(entry.get("name", "")).rstrip("/") or ".")
        info.type = _TAR_TYPES[entry["type"]]
        info.mode = estargz.entry_mode(entry)
        info.uid, info.gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
        info.uname, info.gname = entry.get("userName", ""), entry.get("groupName", "")
        mtime_ns = estargz.modtime_ns(str(entry.get("modtime", "")))
        info.mtime = mtime_ns // 10**9
        if mtime_ns % 10**9:  # as the PAX header of the blob's tar has it
            info.pax_headers["mtime"] = str(Decimal(mtime_ns).scaleb(-9))
        info.linkname = str(entry.get("linkName", ""))
        info.devmajor = int(entry.get("devMajor", 0))
        info.devminor = int(entry.get("devMinor", 0))
        if info.type == tarfile.REGTYPE:
            info.size = int(entry.get("size", 0))
        for key, value in (entry.get("xattrs") or {}).items():
            info.pax_headers["SCHILY.xattr." + key] = base64.b64decode(value).decode(
                "utf-8", "surrogateescape")
        yield info, None
    info = tarfile.TarInfo(estargz.TOC_NAME)
    info.size, info.mode = len(toc.toc_json), 0o644
    yield info, toc.toc_json


class _PlaceholderWriter(LayerWriter):
    """The unpacker, whose regular files of ``placeholders`` ({name: TOC name}) are made
    sparse, of their size, and marked as waiting for their data (``MARK``); the
    ``landmarks`` get their one known byte."""

    def __init__(self, *args, placeholders: dict[str, str], landmarks: set[str],
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.placeholders = placeholders
        self.landmarks = landmarks

    def _create_file(self, member: tarfile.TarInfo, open_data, parent_fd: int,
                     name: str) -> None:
        path = normalize_name(member.name)
        if path in self.landmarks:
            return super()._create_file(member, lambda: io.BytesIO(estargz.LANDMARK_CONTENT),
                                        parent_fd, name)
        toc_name = self.placeholders.get(path)
        if toc_name is None:
            return super()._create_file(member, open_data, parent_fd, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent_fd)
        try:
            os.ftruncate(fd, member.size)
            os.setxattr(fd, MARK, toc_name.encode())
            self._set_fd_attrs(member, fd)
        finally:
            os.close(fd)


def _build_layer_dir(store: Store, toc: LazyToc, target: str, placeholders: dict[str, str],
                     landmarks: set[str], parents: list[str], wait_for_parents,
                     what: str) -> int:
    """Makes the layer directory from the TOC's entries, straight through the unpacker's
    writer (no tar is written or parsed): the tree a full pull makes, but for the
    placeholders. Returns the number of entries."""
    writer = _PlaceholderWriter(target, store.whiteout_format, store.limits, parents,
                                wait_for_parents, placeholders=placeholders,
                                landmarks=landmarks)
    count = 0
    try:
        for member, data in _members(toc):
            count += 1
            if count > store.limits.max_layer_entries:
                raise LayerError(f"{what}: number of entries exceeds the limit of "
                                 f"{store.limits.max_layer_entries:,}")
            writer.add(member, (lambda d=data: io.BytesIO(d)) if data is not None
                       else lambda: None)
        writer.finish()
    except LayerError as e:
        raise LayerError(f"{what}: {e}" if not str(e).startswith(what) else str(e)) from None
    except OSError as e:
        raise LayerError(f"{what}: cannot unpack: {e.strerror or e}") from None
    finally:
        writer.close()
    return count


def add_lazy_layer(store: Store, space: Workspace, layer: LayerSpec, chain: list[str],
                   toc: LazyToc, source: dict, what: str, wait_for_parents,
                   early: EarlyFetch | None = None) -> AddedLayer:
    """Makes ``layer`` present from its TOC (see the module); ``source`` says where its blob
    is (registry, repository, insecure). The files ``early`` has fetched (verified) for it
    (``unionfs.image.early``) are written in, no longer placeholders."""
    assert layer.digest is not None and layer.size is not None
    chain_id = chain[-1]
    added = AddedLayer(chain_id, layer.diff_id, layer.digest, layer.media_type, layer.size)
    with store.layer_lock(chain_id):
        if store.layer_recorded(chain_id):
            return added
        files = toc.files()
        declared = sum(int(f.entry.get("size", 0)) for f in files.values())
        if declared > store.limits.max_layer_bytes:
            raise ImageError(f"{what}: layer {layer.digest[:19]}: its TOC declares "
                             f"{declared:,} bytes, more than the limit")
        target = space.new_path("lazy-" + layer.diff_id[7:])
        os.mkdir(target, 0o755)
        parents = [store.layer_path(c) for c in reversed(chain[:-1])]
        landmarks = {name for name, found in files.items() if _is_landmark(name, found)}
        placeholders = {normalize_name(name): name for name, found in files.items()
                        if int(found.entry.get("size", 0)) > 0 and found.chunks
                        and name not in landmarks}
        entries = _build_layer_dir(store, toc, target, placeholders, landmarks, parents,
                                   wait_for_parents, f"{what} layer {layer.diff_id[7:19]}")
        if early is not None:
            _write_early(target, early.take(layer.digest), files)
        lazy_bytes = sum(int(files[name].entry.get("size", 0)) for name in placeholders.values())
        landmark = files.get(estargz.PREFETCH_LANDMARK)
        prefetch = sorted((f.chunks[0].start, name) for name, f in files.items()
                          if landmark and landmark.chunks and f.chunks
                          and f.chunks[0].start < landmark.chunks[0].start)
        record = {**source, "digest": layer.digest, "size": layer.size,
                  "prefetch": [name for _, name in prefetch],
                  "diff_id": layer.diff_id, "bytes": lazy_bytes,
                  "files": {name: [c.as_list() for c in f.chunks]
                            for name, f in files.items() if f.chunks}}
        os.setxattr(target, MARK, LAYER_MARK.encode())
        final_record = record_path(store.layer_path(chain_id))
        os.makedirs(os.path.dirname(final_record), exist_ok=True)
        with open(space.new_path("lazy-record"), "w") as f:
            f.write(json.dumps(record))  # (json.dump encodes in Python: 10 times slower)
        syncfs(target)
        os.rename(space.new_path("lazy-record"), final_record)  # before the layer's row
        digests = LayerDigests(blob_digest=layer.digest, blob_size=layer.size,
                               diff_id=layer.diff_id, tar_size=toc.tar_size or declared,
                               compression="gzip", entries=entries)
        ImageAdder(store, space)._install_layer(chain, layer.diff_id, target, digests)
    return added


def _write_early(target: str, fetched: dict[str, list[bytes]],
                 files: dict[str, estargz.TocFile]) -> None:
    """Fills the placeholders of the files fetched early and clears their marks (the
    layer's ``syncfs`` follows, before the layer is recorded)."""
    for name, pieces in fetched.items():
        path = os.path.join(target, normalize_name(name))
        with contextlib.suppress(OSError):
            if os.getxattr(path, MARK, follow_symlinks=False).decode() != name:
                continue  # not a placeholder (a landmark)
            fill_placeholder(path, files[name].chunks, pieces)
            os.removexattr(path, MARK, follow_symlinks=False)


def _is_landmark(name: str, found: estargz.TocFile) -> bool:
    return name in (estargz.PREFETCH_LANDMARK, estargz.NO_PREFETCH_LANDMARK) \
        and [c.digest for c in found.chunks] == [
            "sha256:" + hashlib.sha256(estargz.LANDMARK_CONTENT).hexdigest()]


def incomplete_layers(store: Store, image_id: str) -> list[str]:
    """The diff_ids of the image's layers that are lazy and not yet whole."""
    rows = store.db.execute("SELECT chain_id, diff_id FROM image_layers WHERE image_id = ? "
                            "ORDER BY position", (image_id,)).fetchall()
    return [r["diff_id"] for r in rows if is_incomplete(store, r["chain_id"])]


def refuse_incomplete(store: Store, image_id: str, what: str) -> None:
    """One clear line for ``save``/``push`` of an image whose lazy layers are not whole."""
    missing = incomplete_layers(store, image_id)
    if missing:
        raise ImageError(f"cannot {what} {image_id[7:19]}: layer {missing[0][7:19]} was pulled "
                         "lazily and is not complete (pull the image without --lazy first)")


def is_incomplete(store: Store, chain_id: str) -> bool:
    return os.path.exists(record_path(store.layer_path(chain_id)))


def complete_lazy_layer(store: Store, layer: LayerSpec, chain_id: str,
                        blob_path: str) -> AddedLayer:
    """Fills every placeholder of the lazy layer ``chain_id`` from its whole blob (verified
    by the download), checks the blob's tar against the diff_id and keeps the blob: the layer
    is then an ordinary one."""
    assert layer.digest is not None and layer.size is not None
    root = store.layer_path(chain_id)
    with store.layer_lock(chain_id):
        if is_incomplete(store, chain_id):
            plain = hashlib.sha256()
            tar_size = [0]

            def on_plain(data: bytes) -> None:
                plain.update(data)
                tar_size[0] += len(data)

            with open(blob_path, "rb") as raw:
                reader = DecompressingReader(raw, on_plain=on_plain)
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        if member.isreg() and member.size > 0:
                            _fill(os.path.join(root, normalize_name(member.name)),
                                  normalize_name(member.name), tar.extractfile(member))
                reader.drain()
            if "sha256:" + plain.hexdigest() != layer.diff_id:
                raise ImageError(f"layer {layer.digest[:19]}: diff_id mismatch (the config "
                                 f"says {layer.diff_id}, the blob's tar is "
                                 f"sha256:{plain.hexdigest()})")
            syncfs(root)
            if not os.path.exists(store.blob_path(layer.digest)):
                shutil.copyfile(blob_path, store.blob_path(layer.digest) + ".partial")
                os.chmod(store.blob_path(layer.digest) + ".partial", 0o644)  # (any umask)
                os.rename(store.blob_path(layer.digest) + ".partial",
                          store.blob_path(layer.digest))
            syncfs(store.blobs_dir)
            with store.transaction() as db:  # the size of the real tar, not of the TOC's
                db.execute("UPDATE layers SET tar_size = ? WHERE chain_id = ?",
                           (tar_size[0], chain_id))
            with contextlib.suppress(OSError):
                os.removexattr(root, MARK)
            os.unlink(record_path(root))
    return AddedLayer(chain_id, layer.diff_id, layer.digest, layer.media_type, layer.size)


def _fill(path: str, name: str, data) -> None:
    """Writes a placeholder's content (if it is still one, for this entry) in place."""
    try:
        if os.getxattr(path, MARK, follow_symlinks=False).decode() != name:
            return
    except OSError:
        return
    before = os.stat(path, follow_symlinks=False)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        offset = 0
        while piece := data.read(1 << 20):
            os.pwrite(fd, piece, offset)
            offset += len(piece)
        os.fsync(fd)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        with contextlib.suppress(OSError):  # a mount may have fetched it meanwhile
            os.removexattr(fd, MARK)
    finally:
        os.close(fd)


class LayerCompleted(Exception):
    """Raised by a throttle: the layer became whole meanwhile (a pull completed it)."""


async def complete_in_background(layer_root: str, record: dict, client,
                                 throttle: Callable[[int], Awaitable[None]]) -> bool:
    """Makes the lazy layer at ``layer_root`` (``<store>/layers/<hex>``) an ordinary one from
    a mount daemon: its blob downloaded by the pull's code into
    ``<store>/downloads/<hex>.lazy.partial`` (resumed where an earlier mount left it, checked
    against its digest), ``throttle`` awaited after each piece, then ``complete_lazy_layer``
    (the diff_id checked over the whole tar). Until that ends the layer stays a valid lazy
    one. One daemon at a time downloads a layer (the others wait for its lock, and take over
    if its mount ends first); an ordinary pull meanwhile downloads on its own, not held up.
    False if the layer was (or became) whole otherwise."""
    import trio  # here: the store's commands that import this module need no event loop

    from unionfs.image.registry.pull import Puller  # (which imports this module)
    from unionfs.image.store.locks import FileLock

    store = Store(os.path.dirname(os.path.dirname(os.path.normpath(layer_root))))
    chain_id = "sha256:" + os.path.basename(os.path.normpath(layer_root))
    layer = LayerSpec(record["digest"][7:], "", record["digest"], int(record["size"]),
                      record["diff_id"])
    partial = os.path.join(store.root, "downloads", record["digest"][7:] + ".lazy.partial")
    os.makedirs(os.path.dirname(partial), mode=0o700, exist_ok=True)
    lock = FileLock(partial.removesuffix(".partial") + ".lock", remove_when_free=True)
    await trio.to_thread.run_sync(lambda: lock.acquire(exclusive=True), abandon_on_cancel=True)
    try:
        if not is_incomplete(store, chain_id):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            return False
        puller = Puller(store, client, reference.parse(
            f"{record['registry']}/{record['repository']}"), None, Progress())

        async def throttled(nbytes: int) -> None:
            if not is_incomplete(store, chain_id):
                raise LayerCompleted
            await throttle(nbytes)

        puller.throttle = throttled
        try:
            await puller._fetch_to(partial, layer)
        except LayerCompleted:
            os.unlink(partial)
            return False
        await trio.to_thread.run_sync(complete_lazy_layer, store, layer, chain_id, partial,
                                      abandon_on_cancel=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        return True
    finally:
        lock.release()
        store.close()


def files_opened_by(store: Store, image_id: str, image_name: str, command: str,
                    workdir: str) -> list[str]:
    """The image's files that ``command`` (run by ``/bin/sh -c`` in a container of the image,
    to its end) opens, in the order of their first use: the daemon of the container's
    rootfs mount logs them (``-o open_log``). For ``push --prefetch-from``."""
    from unionfs.image.container import lifecycle, records, rootfs
    from unionfs.image.container.records import RunSpec
    from unionfs.image.container.session import Session

    opened = os.path.join(workdir, "opened")
    spec = RunSpec(entrypoint=["/bin/sh"], command=["-c", command], network="host")
    container = lifecycle.create(store, image_id, image_name, None, spec)
    try:
        rootfs.mount(store, container, extra_options=[f"open_log={opened}"])
        code = Session(store, records.get(store, container.id)).run(
            log_path=os.path.join(workdir, "prefetch-from.log"))
    finally:
        Session(store, records.get(store, container.id)).remove(force=True)
    if code != 0:
        print(f"pyunion: --prefetch-from: the command exited with status {code} (the files "
              "it opened come first all the same)", file=sys.stderr, flush=True)
    try:
        with open(opened, encoding="utf-8", errors="surrogateescape") as f:
            return list(dict.fromkeys(line.rstrip("\n") for line in f if line.strip()))
    except FileNotFoundError:
        return []
