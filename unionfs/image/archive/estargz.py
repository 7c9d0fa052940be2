"""eStargz: a gzip layer tar that can be read file by file (stargz-snapshotter's docs/estargz.md).

The blob is an ordinary gzip tar (any client pulls and unpacks it), in which every non-empty
regular file (every ``CHUNK_SIZE`` chunk of a large one) is its own gzip member, so one file can
be fetched with an HTTP Range request and decompressed alone. The last tar entry is the TOC,
``stargz.index.json``, in a gzip member of its own: the metadata of every entry and, for each
file chunk, the offset of its gzip member and the sha256 of its bytes (``chunkDigest``). A
51-byte footer, an empty gzip member whose extra field ``SG`` reads ``%016xSTARGZ``, gives the
TOC's offset. The layer descriptor carries the TOC's digest in ``TOC_DIGEST_ANNOTATION``, so a
verified manifest verifies the TOC, which verifies each chunk.

Files named in ``prefetch`` come first, then ``.prefetch.landmark``; with none, the blob starts
with ``.no.prefetch.landmark``. Both landmarks are one-byte files (0x0f).
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from unionfs.image.archive.tarwriter import Entry, as_tarinfo, entry_header
from unionfs.image.archive.unpack import _ns_times, _xattrs, normalize_name

TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENT = b"\x0f"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
FOOTER_SIZE = 51
CHUNK_SIZE = 4 << 20
MAX_TOC_MEMBER = 64 << 20  # (as a pull fetches: registry.pull.MAX_TOC_BYTES)
_TYPES = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
          tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
_MODE_BITS = {"dir": 0o040000, "reg": 0o100000, "symlink": 0o120000, "hardlink": 0o100000,
              "char": 0o020000, "block": 0o060000, "fifo": 0o010000}


class EstargzError(ValueError):
    pass


@dataclass
class EstargzLayer:
    """What a conversion wrote: the blob's digest and size, the diff_id (sha256 of the
    uncompressed tar, the TOC entry included) and its size, and the TOC's digest."""

    digest: str
    size: int
    diff_id: str
    tar_size: int
    toc_digest: str

    def annotations(self) -> dict[str, str]:
        return {TOC_DIGEST_ANNOTATION: self.toc_digest,
                UNCOMPRESSED_SIZE_ANNOTATION: str(self.tar_size)}


# ---------------------------------------------------------------------- writing


class _MemberWriter:
    """The blob being written: plain tar bytes go into the current gzip member; a new member
    starts where ``new_member`` is called. Hashes the blob and the plain stream."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self.blob = hashlib.sha256()
        self.plain = hashlib.sha256()
        self.plain_size = 0
        self._z: zlib._Compress | None = None  # type: ignore[name-defined]

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.blob.update(data)
            self.offset += len(data)

    def write(self, data: bytes) -> None:
        if self._z is None:
            self._z = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.plain.update(data)
        self.plain_size += len(data)
        self._emit(self._z.compress(data))

    def new_member(self) -> int:
        """Closes the current member (if any); returns the offset the next one starts at."""
        if self._z is not None:
            self._emit(self._z.flush())
            self._z = None
        return self.offset

    def raw(self, data: bytes) -> None:
        self.new_member()
        self._emit(data)


def footer(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty gzip member whose extra field ``SG`` holds the offset."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = b"\x1f\x8b\x08\x04" + b"\x00" * 4 + b"\x00\xff" + struct.pack("<H", len(extra))
    empty_stored_block = b"\x01\x00\x00\xff\xff"
    result = header + extra + empty_stored_block + b"\x00" * 8
    assert len(result) == FOOTER_SIZE
    return result


def parse_footer(data: bytes) -> int:
    """The TOC offset a footer names; EstargzError if ``data`` is not one."""
    if len(data) != FOOTER_SIZE or not data.startswith(b"\x1f\x8b\x08\x04") \
            or data[12:14] != b"SG" or data[16:38][16:] != b"STARGZ":
        raise EstargzError("the blob does not end with an eStargz footer")
    try:
        offset = int(data[16:32], 16)
        zlib.decompressobj(wbits=31).decompress(data)
    except (ValueError, zlib.error):
        raise EstargzError("malformed eStargz footer") from None
    return offset


def _modtime(member: tarfile.TarInfo) -> str:
    """RFC 3339, in UTC, with the nanoseconds of a PAX mtime if it has any (as Go's
    RFC3339Nano: a lazy pull gives its files the very mtime a full pull does)."""
    ns = _ns_times(member)[1]
    seconds, fraction = divmod(ns, 10**9)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{fraction:09d}".rstrip("0") if fraction else "") + "Z"


@functools.lru_cache(maxsize=4096)  # (a layer's files share a few times)
def modtime_ns(text: str) -> int:
    """The nanoseconds since the epoch of a TOC ``modtime`` (0 if it is not RFC 3339)."""
    found = re.fullmatch(r"(.+?)(?:\.(\d{1,9})\d*)?(Z|[+-]\d\d:\d\d)", text or "")
    if found is None:
        return 0
    try:
        moment = datetime.datetime.fromisoformat(
            found.group(1) + found.group(3).replace("Z", "+00:00"))
    except ValueError:
        return 0
    whole = (moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)) \
        // datetime.timedelta(seconds=1)
    return whole * 10**9 + int((found.group(2) or "0").ljust(9, "0"))


def _toc_entry(member: tarfile.TarInfo, name: str) -> dict:
    kind = "reg" if member.isreg() else _TYPES.get(member.type)
    if kind is None:
        raise EstargzError(f"{name}: tar entry type {member.type!r} has no eStargz form")
    shown = (name or ".") + "/" if kind == "dir" else name
    entry: dict = {"name": shown, "type": kind,
                   "modtime": _modtime(member), "mode": _MODE_BITS[kind] | member.mode,
                   "uid": member.uid, "gid": member.gid}
    if member.uname:
        entry["userName"] = member.uname
    if member.gname:
        entry["groupName"] = member.gname
    if kind in ("symlink", "hardlink"):
        entry["linkName"] = normalize_name(member.linkname) if kind == "hardlink" \
            else member.linkname
    if kind in ("char", "block"):
        entry["devMajor"], entry["devMinor"] = member.devmajor, member.devminor
    xattrs = _xattrs(member)
    if xattrs:
        entry["xattrs"] = {k: base64.b64encode(v).decode() for k, v in xattrs.items()}
    if kind == "reg":
        entry["size"] = member.size
    return entry


def _write_file(blob: _MemberWriter, data: BinaryIO, size: int, entry: dict,
                toc: list[dict]) -> None:
    """A regular file's payload, one gzip member per chunk, with its TOC entries: the first
    chunk's is the file's own (``reg``), the others ``chunk``; the last one's size says 0."""
    whole = hashlib.sha256()
    entries: list[dict] = []
    chunk_offset = 0
    while chunk_offset < size:
        piece = data.read(min(CHUNK_SIZE, size - chunk_offset))
        if not piece:
            raise EstargzError(f"{entry['name']}: the tar ends inside the file")
        current = {"name": entry["name"], "type": "chunk"} if entries else entry
        current.update(offset=blob.new_member(), chunkOffset=chunk_offset,
                       chunkSize=len(piece),
                       chunkDigest="sha256:" + hashlib.sha256(piece).hexdigest())
        entries.append(current)
        blob.write(piece)
        whole.update(piece)
        chunk_offset += len(piece)
    blob.new_member()
    entries[-1]["chunkSize"] = 0
    entry["digest"] = "sha256:" + whole.hexdigest()
    toc.extend(entries)


def _landmark(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(LANDMARK_CONTENT), 0o644, 0
    return info


def _tar_header(member: tarfile.TarInfo) -> bytes:
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def toc_member(toc_json: bytes) -> tarfile.TarInfo:
    """The tar entry of the TOC (the blob's last)."""
    info = tarfile.TarInfo(TOC_NAME)
    info.size, info.mode = len(toc_json), 0o644
    return info


class EstargzWriter:
    """An eStargz blob written in one pass to ``out`` from entries in their final order:
    ``add_landmark`` where the prefetched files end (first, with none), the entries with
    ``add`` (an ``archive.tarwriter.Entry``, as ``generate.write_layer_entries`` and its
    callers hand them) or ``add_member`` (a ``TarInfo``), then ``finish``. ``toc_json``: the
    TOC, once finished (its entry, ``toc_member``, is the tar's last)."""

    def __init__(self, out: BinaryIO) -> None:
        self._blob = _MemberWriter(out)
        self._toc: list[dict] = []
        self.toc_json = b""

    def add(self, entry: Entry, data: BinaryIO | None = None) -> None:
        self.add_member(as_tarinfo(entry), data, entry_header(entry))

    def add_member(self, member: tarfile.TarInfo, data: BinaryIO | None,
                   header: bytes | None = None) -> None:
        """Writes ``member`` (its tar ``header`` as given, else as tarfile encodes it) and,
        for a non-empty regular file, its data as gzip members of their own."""
        entry = _toc_entry(member, normalize_name(member.name))
        self._blob.write(header if header is not None else _tar_header(member))
        if member.isreg() and member.size > 0:
            assert data is not None
            _write_file(self._blob, data, member.size, entry, self._toc)
            self._blob.write(_padding(member.size))
        else:
            self._toc.append(entry)

    def add_landmark(self, prefetched: bool) -> tarfile.TarInfo:
        """Writes ``.prefetch.landmark`` (after the prefetched files) or, with none,
        ``.no.prefetch.landmark``; returns its entry (its content is ``LANDMARK_CONTENT``)."""
        landmark = _landmark(PREFETCH_LANDMARK if prefetched else NO_PREFETCH_LANDMARK)
        self.add_member(landmark, io.BytesIO(LANDMARK_CONTENT))
        return landmark

    def finish(self) -> EstargzLayer:
        """Writes the TOC entry, the tar's end and the footer."""
        self.toc_json = json.dumps({"version": 1, "entries": self._toc},
                                   separators=(",", ":")).encode()
        toc_offset = self._blob.new_member()
        self._blob.write(_tar_header(toc_member(self.toc_json)) + self.toc_json
                         + _padding(len(self.toc_json)) + b"\0" * (2 * tarfile.BLOCKSIZE))
        self._blob.raw(footer(toc_offset))
        blob = self._blob
        return EstargzLayer("sha256:" + blob.blob.hexdigest(), blob.offset,
                            "sha256:" + blob.plain.hexdigest(), blob.plain_size,
                            "sha256:" + hashlib.sha256(self.toc_json).hexdigest())


def convert(tar_path: str, out: BinaryIO, prefetch: Iterable[str] = ()) -> EstargzLayer:
    """Writes the layer tar at ``tar_path`` (uncompressed) to ``out`` as eStargz."""
    writer = EstargzWriter(out)
    with tarfile.open(tar_path, mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tar:
        # an earlier conversion's TOC and landmarks are replaced by this one's
        members = [m for m in tar.getmembers() if normalize_name(m.name) not in (
            TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)]
        by_name = {normalize_name(m.name): m for m in members}
        first = [by_name[n] for n in dict.fromkeys(normalize_name(p.lstrip("/")) for p in prefetch)
                 if n in by_name and by_name[n].isreg()]
        for member in first:
            writer.add_member(member, tar.extractfile(member))
        writer.add_landmark(prefetched=bool(first))
        for member in members:
            if all(member is not f for f in first):
                writer.add_member(member, tar.extractfile(member) if member.isreg() else None)
    return writer.finish()


def read_toc(path: str) -> bytes | None:
    """The TOC JSON of the eStargz blob at ``path`` (from its footer); None if the file is
    missing or not eStargz. For the TOC digest of a layer the store holds
    (``store.adding``): the blob is its only record."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER_SIZE:
                return None
            f.seek(size - FOOTER_SIZE)
            offset = parse_footer(f.read(FOOTER_SIZE))
            if not 0 <= offset < size - FOOTER_SIZE \
                    or size - FOOTER_SIZE - offset > MAX_TOC_MEMBER:
                return None
            f.seek(offset)
            return _toc_json(f.read(size - FOOTER_SIZE - offset))
    except (OSError, EstargzError):
        return None


# ---------------------------------------------------------------------- reading


@dataclass
class Chunk:
    """One gzip member of a file: ``[start, end)`` in the blob, ``size`` plain bytes at
    ``chunk_offset`` of the file, with their sha256."""

    start: int
    end: int
    chunk_offset: int
    size: int
    digest: str

    def as_list(self) -> list:
        return [self.start, self.end, self.chunk_offset, self.size, self.digest]


@dataclass
class TocFile:
    entry: dict
    chunks: list[Chunk] = field(default_factory=list)


def _toc_json(member: bytes) -> bytes:
    """The TOC JSON from the TOC's gzip member (its tar header, the JSON, the tar's end)."""
    gunzip = zlib.decompressobj(wbits=31)
    try:
        plain = gunzip.decompress(member)
        info = tarfile.TarInfo.frombuf(plain[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except (zlib.error, tarfile.TarError) as e:
        raise EstargzError(f"the TOC is not a gzip tar entry ({e})") from None
    if not gunzip.eof:  # (its JSON may be whole: the digest would not tell)
        raise EstargzError("the TOC's gzip member does not end before the footer")
    if info.name != TOC_NAME:
        raise EstargzError(f"the TOC entry is named {info.name!r}, not {TOC_NAME}")
    return plain[tarfile.BLOCKSIZE:tarfile.BLOCKSIZE + info.size]


def parse_toc_member(member: bytes, expected_digest: str) -> tuple[bytes, dict]:
    """The TOC JSON (checked against ``expected_digest``) and its document, from the TOC's
    gzip member (its tar header, the JSON, the tar's end)."""
    data = _toc_json(member)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != expected_digest:
        raise EstargzError(f"TOC digest mismatch (the manifest says {expected_digest}, "
                           f"the TOC is {digest})")
    try:
        document = json.loads(data)
    except ValueError as e:
        raise EstargzError(f"the TOC is not JSON ({e})") from None
    if not isinstance(document, dict) or document.get("version") != 1 \
            or not isinstance(document.get("entries"), list):
        raise EstargzError("the TOC is not a version 1 eStargz TOC")
    return data, document


def files_of(document: dict, toc_offset: int) -> dict[str, TocFile]:
    """Each non-empty regular file of a TOC by name, with its chunks' byte ranges (a chunk
    ends where the next gzip member starts: the next offset in the blob, or the TOC)."""
    offsets = sorted({e["offset"] for e in document["entries"]
                      if isinstance(e, dict) and isinstance(e.get("offset"), int)}
                     | {toc_offset})
    following = {a: b for a, b in zip(offsets, offsets[1:], strict=False)}
    files: dict[str, TocFile] = {}
    for entry in document["entries"]:
        if not isinstance(entry, dict) or entry.get("type") not in ("reg", "chunk"):
            continue
        name = normalize_name(str(entry.get("name", "")))
        if entry["type"] == "reg":
            files[name] = TocFile(entry)
        if not isinstance(entry.get("offset"), int) or not entry.get("chunkDigest"):
            continue
        owner = files.get(name)
        if owner is None or entry["offset"] not in following:
            raise EstargzError(f"TOC: chunk of {name} without its file or past the TOC")
        start = entry["offset"]
        try:
            file_size = int(owner.entry.get("size", 0))
            chunk_offset = int(entry.get("chunkOffset", 0))
            size = int(entry.get("chunkSize") or 0) or file_size - chunk_offset
        except (TypeError, ValueError):
            raise EstargzError(f"TOC: malformed sizes for {name}") from None
        if not 0 <= start < toc_offset or size <= 0 or chunk_offset < 0 \
                or chunk_offset + size > file_size:
            raise EstargzError(f"TOC: a chunk of {name} lies outside the file or the blob")
        owner.chunks.append(Chunk(start, following[start], chunk_offset, size,
                                  str(entry["chunkDigest"])))
    return files


def entry_mode(entry: dict) -> int:
    return int(entry.get("mode", 0)) & 0o7777


def chunk_bytes(raw: bytes, chunk: Chunk) -> bytes:
    """The plain bytes of ``chunk`` from its blob range ``raw`` (the chunk's gzip member, and
    maybe the member of tar headers after it), checked against its size and digest."""
    try:
        plain = zlib.decompressobj(wbits=31).decompress(raw, chunk.size + 1)
    except zlib.error as e:
        raise EstargzError(f"chunk at {chunk.start}: corrupt gzip member ({e})") from None
    digest = "sha256:" + hashlib.sha256(plain).hexdigest()
    if len(plain) != chunk.size or digest != chunk.digest:
        raise EstargzError(f"chunk at {chunk.start}: digest mismatch (the TOC says "
                           f"{chunk.digest}, the bytes are {digest})")
    return plain
