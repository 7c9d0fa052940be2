"""The files a container opens first, fetched while ``run --lazy`` / ``create --lazy`` makes
the lazy layers' directories (``unionfs.image.lazy``).

Making a large layer's directory from its TOC takes a second or more, with the network idle;
the container then waits for each file it opens, one round trip after another. So the pull
fetches, at the same time, what the container is known to open first: the runtime's
``/etc/passwd`` and ``/etc/group``, the program (found in its PATH, symlinks followed through
the TOCs), and, when the program is a dynamic ELF executable, its loader, the libraries it
names (``DT_NEEDED``, looked up where the loader looks by default and in its RUNPATH) and
``/etc/ld.so.cache``. Files within ``MERGE_GAP`` of each other in a blob come in one Range
request, all requests at once. Each chunk is checked against its digest before the file is
written; a file that fails, or has not arrived ``EARLY_WAIT`` seconds after its layer's
directory is made, stays a placeholder, fetched at its first open as any other. A whiteout
is not seen: at worst a file is fetched that the container will not see.
"""

from __future__ import annotations

import logging
import posixpath
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from unionfs.image.archive import estargz
from unionfs.image.archive.unpack import LayerError, normalize_name
from unionfs.image.container.copy import follow_links
from unionfs.image.errors import ImageError

if TYPE_CHECKING:
    from unionfs.image.lazy import LazyToc

log = logging.getLogger("pyunion")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNTIME_FILES = ("/etc/passwd", "/etc/group")  # runc reads both at every container's start
LIBRARY_DIRS = ("lib", "usr/lib", "lib64", "usr/lib64")  # the loader's defaults (and below)
MERGE_GAP = 64 << 10  # files this close in a blob come in one Range request
EARLY_WAIT = 10.0  # seconds a made layer directory waits for its early files at most
GetRange = Callable[[str, int, int], Awaitable[bytes]]  # (blob digest, first, last byte)


def paths_opened_first(config: dict, entrypoint: list[str] | None, command: list[str] | None,
                       env: list[str], workdir: str | None) -> list[list[str]]:
    """What a container of the image (``config``, with these ``run`` options) opens first,
    as lists of alternatives: the runtime's /etc/passwd and /etc/group, and the program it
    runs (each directory of its PATH in turn). A malformed config only means less."""
    image = config.get("config") if isinstance(config.get("config"), dict) else {}
    program_args = entrypoint if entrypoint is not None else _strings(image.get("Entrypoint"))
    if command is not None:
        program_args = [*program_args, *command]
    elif entrypoint is None:
        program_args = [*program_args, *_strings(image.get("Cmd"))]
    wanted = [[path] for path in RUNTIME_FILES]
    program = program_args[0] if program_args else ""
    image_workdir = image.get("WorkingDir")
    if "/" in program:
        base = workdir or (image_workdir if isinstance(image_workdir, str) else "") or "/"
        wanted.append([posixpath.join("/", base, program)])
    elif program:
        variables = [*_strings(image.get("Env")), *env]
        search = next((e[5:] for e in reversed(variables) if e.startswith("PATH=")),
                      DEFAULT_PATH)
        wanted.append([posixpath.join(d, program) for d in search.split(":")
                       if d.startswith("/")])
    return wanted


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class EarlyFetch:
    """The early files of an image's lazy layers (``tocs``: blob digest -> TOC, bottom to
    top): ``fetch`` in the pull's event loop, ``take`` from the thread that makes a layer's
    directory."""

    def __init__(self, tocs: dict[str, LazyToc], wanted: list[list[str]]) -> None:
        self.tocs = tocs
        self.wanted = wanted
        self.top_first = [(digest, {_name(e): e for e in toc.document["entries"]
                                    if isinstance(e, dict) and e.get("type") != "chunk"})
                          for digest, toc in reversed(tocs.items())]
        self._fetched: dict[str, dict[str, list[bytes]]] = {d: {} for d in tocs}
        self._taken: set[str] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()

    async def fetch(self, get_range: GetRange) -> None:
        """The wanted files, then the loader and libraries of each ELF program among them."""
        try:
            first = await self._fetch_all(get_range, self._locate(self.wanted))
            needed: list[list[str]] = []
            for _, _, data in first:
                needed += self._elf_needs(data)
            await self._fetch_all(get_range, self._locate(needed))
        finally:
            self._done.set()

    def take(self, digest: str) -> dict[str, list[bytes]]:
        """The layer's files that have arrived (verified), once the fetch is over or
        ``EARLY_WAIT`` seconds have passed (the container would wait for these files at
        their first open all the same); what arrives later is dropped."""
        self._done.wait(EARLY_WAIT)
        with self._lock:
            self._taken.add(digest)
            return dict(self._fetched.get(digest, {}))

    def files(self, digest: str) -> dict[str, estargz.TocFile]:
        return self.tocs[digest].files()

    def _locate(self, wanted: list[list[str]]) -> dict[str, list[str]]:
        """{blob digest: names} of the files ``wanted`` names (of each list, the first
        alternative that is a file with data)."""
        found: dict[str, list[str]] = {}
        for alternatives in wanted:
            for path in alternatives:
                at = _resolve(self.top_first, path)
                if at is not None and self.files(at[0]).get(at[1]) is not None \
                        and self.files(at[0])[at[1]].chunks:
                    if at[1] not in found.setdefault(at[0], []):
                        found[at[0]].append(at[1])
                    break
        return found

    async def _fetch_all(self, get_range: GetRange, located: dict[str, list[str]]
                         ) -> list[tuple[str, str, bytes]]:
        """Fetches every run at once; (digest, name, data) of each file that arrived."""
        arrived: list[tuple[str, str, bytes]] = []
        async with trio.open_nursery() as nursery:
            for digest, names in located.items():
                for run in self._runs(digest, names):
                    nursery.start_soon(self._fetch_run, get_range, digest, run, arrived)
        return arrived

    def _runs(self, digest: str, names: list[str]) -> list[list[str]]:
        """``names`` in blob order, in runs each fetched with one request."""
        files = self.files(digest)
        runs: list[list[str]] = []
        end = -1
        for name in sorted(names, key=lambda n: files[n].chunks[0].start):
            if runs and files[name].chunks[0].start - end <= MERGE_GAP:
                runs[-1].append(name)
            else:
                runs.append([name])
            end = max(end, files[name].chunks[-1].end)
        return runs

    async def _fetch_run(self, get_range: GetRange, digest: str, run: list[str],
                         arrived: list[tuple[str, str, bytes]]) -> None:
        files = self.files(digest)
        start = files[run[0]].chunks[0].start
        end = max(files[name].chunks[-1].end for name in run)
        try:
            raw = await get_range(digest, start, end - 1)
        except Exception as e:  # noqa: BLE001 - only early: each file is fetched at its open
            log.info("early fetch of %s: %s", ", ".join(run), e or type(e).__name__)
            return
        for name in run:
            try:
                pieces = [estargz.chunk_bytes(raw[c.start - start:c.end - start], c)
                          for c in files[name].chunks]
            except estargz.EstargzError as e:
                log.warning("early fetch of %s: %s", name, e)
                continue
            with self._lock:
                if digest not in self._taken:
                    self._fetched[digest][name] = pieces
            arrived.append((digest, name, b"".join(pieces)))

    def _elf_needs(self, data: bytes) -> list[list[str]]:
        """The loader, /etc/ld.so.cache and the libraries of the ELF program ``data``
        (nothing for anything else)."""
        parsed = elf_needs(data)
        if parsed is None:
            return []
        interpreter, libraries, runpath = parsed
        dirs = [d for d in runpath if d.startswith("/")] + ["/" + d for d in LIBRARY_DIRS]
        dirs += ["/" + d for d in self._triplet_dirs()]
        wanted = [["/etc/ld.so.cache"]] + ([[interpreter]] if interpreter else [])
        wanted += [[posixpath.join(d, lib) for d in dirs] for lib in libraries
                   if "/" not in lib]
        return wanted

    def _triplet_dirs(self) -> list[str]:
        """Multiarch library directories (``lib/x86_64-linux-gnu``) the layers have."""
        return sorted({name for _, entries in self.top_first for name, e in entries.items()
                       if e.get("type") == "dir" and posixpath.dirname(name) in LIBRARY_DIRS
                       and "-linux-" in posixpath.basename(name)})


def _name(entry: dict) -> str:
    try:
        return normalize_name(str(entry.get("name", "")))
    except LayerError:
        return ""


def _resolve(top_first: list[tuple[str, dict[str, dict]]], path: str) -> tuple[str, str] | None:
    """(blob digest, name) of the regular file at ``path``, symlinks followed through the
    layers (the top-most layer's entry taken); None if there is none."""
    def entry_of(name: str) -> tuple[str, dict] | None:
        return next(((digest, entries[name]) for digest, entries in top_first
                     if name in entries), None)

    def link_target(components: list[str]) -> str | None:
        found = entry_of("/".join(components))
        if found is None or found[1].get("type") != "symlink":
            return None
        return str(found[1].get("linkName", ""))

    try:
        name = "/".join(follow_links(path, link_target))
    except ImageError:  # a loop of links
        return None
    found = entry_of(name)
    return (found[0], name) if found is not None and found[1].get("type") == "reg" else None


def elf_needs(data: bytes) -> tuple[str, list[str], list[str]] | None:
    """(loader, DT_NEEDED names, RUNPATH or RPATH dirs) of the 64-bit little-endian ELF
    file ``data``; None for anything else."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    try:
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
                   for i in range(phnum)]
        interpreter = ""
        loads, dynamic = [], None
        for p_type, _, offset, vaddr, _, filesz, _, _ in headers:
            if p_type == 3:  # PT_INTERP
                interpreter = data[offset:offset + filesz].split(b"\0")[0].decode()
            elif p_type == 1:  # PT_LOAD
                loads.append((vaddr, offset, filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dynamic = (offset, filesz)
        if dynamic is None:
            return (interpreter, [], []) if interpreter else None
        tags = [struct.unpack_from("<qQ", data, dynamic[0] + at)
                for at in range(0, dynamic[1], 16)]
        strtab_vaddr = next(v for t, v in tags if t == 5)  # DT_STRTAB
        strtab = next(off + strtab_vaddr - va for va, off, size in loads
                      if va <= strtab_vaddr < va + size)

        def string(at: int) -> str:
            return data[strtab + at:data.index(b"\0", strtab + at)].decode()

        needed = [string(v) for t, v in tags if t == 1]  # DT_NEEDED
        runpath = [d for t, v in tags if t in (15, 29) for d in string(v).split(":")]
        return interpreter, needed, runpath
    except (struct.error, StopIteration, ValueError, UnicodeDecodeError):
        return None
