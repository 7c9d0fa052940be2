"""Layer compression, recognised by magic bytes (a media type can lie): gzip, zstd or none."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


def detect(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` for a stream starting with ``head``."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> None:
        pass


class _Unzstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._eof_seen = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._d.decompress(data))
            if self._d.eof:
                data = self._d.unused_data
                self._d = zstandard.ZstdDecompressor().decompressobj()
                self._eof_seen = True
            else:
                self._eof_seen = False
                data = b""
        return b"".join(out)

    def finish(self) -> None:
        if not self._eof_seen:
            raise zstandard.ZstdError("truncated zstd stream")


class DecompressingReader:
    """A file-like reader of the decompressed bytes of ``raw`` (which is read in chunks).

    ``on_raw`` sees every compressed chunk (to hash the blob as stored) and ``on_plain`` every
    decompressed chunk (to hash the diff_id); both are checked by the caller at the end.

    With ``background=True`` a thread reads, hashes and decompresses ahead (zlib, zstd and
    hashlib release the GIL), so that work overlaps with the caller's (unpacking the tar);
    call ``close()`` when done.
    """

    def __init__(self, raw: BinaryIO, on_raw=None, on_plain=None, *,
                 background: bool = False) -> None:
        self._raw = raw
        self._on_raw = on_raw
        self._on_plain = on_plain
        head = raw.read(CHUNK)
        self.kind = detect(head)
        self._decoder = {"gzip": _GzipDecoder, "zstd": _Unzstd, "none": _Identity}[self.kind]()
        self._pending = head
        self._buffer = b""
        self._offset = 0
        self._eof = False
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        if background:
            self._queue = queue.Queue(maxsize=8)
            threading.Thread(target=self._produce, name="decompress", daemon=True).start()

    def _next_plain(self) -> bytes | None:
        """The next non-empty decompressed chunk, or None at the end of the stream."""
        while True:
            chunk, self._pending = (self._pending, b"") if self._pending else (
                self._raw.read(CHUNK), b"")
            if not chunk:
                self._decoder.finish()
                return None
            if self._on_raw:
                self._on_raw(chunk)
            plain = self._decoder.feed(chunk)
            if plain:
                if self._on_plain:
                    self._on_plain(plain)
                return plain

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                item: object = self._next_plain()
            except BaseException as e:  # noqa: BLE001 - handed to the reading thread
                item = _Failure(e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is None or isinstance(item, _Failure):
                return

    def _take(self) -> bytes | None:
        if self._queue is None:
            return self._next_plain()
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        return item  # type: ignore[return-value]

    def _fill(self) -> bool:
        if self._eof:
            return False
        plain = self._take()
        if plain is None:
            self._eof = True
            return False
        self._buffer = self._buffer[self._offset:] + plain
        self._offset = 0
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer[self._offset:]]
            self._buffer, self._offset = b"", 0
            while self._fill():
                parts.append(self._buffer)
                self._buffer = b""
            return b"".join(parts)
        while len(self._buffer) - self._offset < size and self._fill():
            pass
        data = self._buffer[self._offset:self._offset + size]
        self._offset += len(data)
        return data

    def drain(self) -> None:
        """Reads to the end of the stream (tar's trailing zero blocks and padding included)."""
        while self._fill():
            self._buffer, self._offset = b"", 0
        self._buffer, self._offset = b"", 0

    def close(self) -> None:
        """Stops the background thread (if any) without reading further."""
        self._stop.set()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _GzipDecoder:
    """gzip members one after another; the stream must end at a member's end."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._in_member = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_member = True
            out.append(self._d.decompress(data))
            if self._d.eof:
                data = self._d.unused_data
                self._d = zlib.decompressobj(wbits=31)
                self._in_member = False
            else:
                data = b""
        return b"".join(out)

    def finish(self) -> None:
        if self._in_member:
            raise zlib.error("truncated gzip stream")


def compress_gzip(level: int = 1):
    """A gzip compressor object (``compress``/``flush``) writing one gzip member."""
    return zlib.compressobj(level, zlib.DEFLATED, 31)


class HashingGzipFile:
    """A write-only file: hashes the plain tar (``plain``: the diff_id; ``plain_size``) and
    writes it gzip-compressed, hashing and counting the compressed bytes too (``compressed``,
    ``compressed_size``: the blob's digest and size); ``finish()`` ends it.

    ``parallel``: compress on every CPU (zlib releases the GIL): the stream is cut into
    4 MiB pieces, each compressed as its own gzip member, written in order. A gzip file may
    hold several members, and every reader of layers (this store's, Go's) reads them; a
    single member (the default) is what other tools write."""

    PIECE = 4 << 20

    def __init__(self, out, *, parallel: bool = False) -> None:
        self._out = out
        self.plain = hashlib.sha256()
        self.plain_size = 0
        self.compressed = hashlib.sha256()
        self.compressed_size = 0
        self._z = None if parallel else compress_gzip(1)
        self._pending: list[bytes] = []
        self._pending_size = 0
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers) if parallel else None
        self._queue: deque[Future[bytes]] = deque()
        self._limit = 2 * workers

    @property
    def diff_id(self) -> str:
        return "sha256:" + self.plain.hexdigest()

    def write(self, data: bytes) -> int:
        self.plain.update(data)
        self.plain_size += len(data)
        if self._z is not None:
            self._emit(self._z.compress(data))
            return len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self.PIECE:
            self._submit()
        return len(data)

    def finish(self) -> None:
        if self._z is not None:
            self._emit(self._z.flush())
            return
        assert self._pool is not None
        try:
            if self._pending or not self._queue:
                self._submit()
            while self._queue:
                self._emit(self._queue.popleft().result())
        finally:
            self._pool.shutdown(cancel_futures=True)

    @staticmethod
    def _member(data: bytes) -> bytes:
        z = compress_gzip(1)
        return z.compress(data) + z.flush()

    def _submit(self) -> None:
        assert self._pool is not None
        piece = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self._queue.append(self._pool.submit(self._member, piece))
        while len(self._queue) > self._limit:
            self._emit(self._queue.popleft().result())

    def _emit(self, data: bytes) -> None:
        self.compressed.update(data)
        self.compressed_size += len(data)
        self._out.write(data)
