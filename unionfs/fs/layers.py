"""The layer stack and name resolution across it (the kernel's ``namei.c``).

Layer 0 is the upper (absent for a read-only view); layers 1..n are the lowers, top-most first.
A merged object is described by where it lives: whether the upper has it, and which lower
directories merge below it (for a directory) or which lower file provides it (otherwise).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from unionfs.fs import longpaths, ondisk

UPPER = 0
WHITEOUT = -1  # a "kind" meaning: this name is deleted here and in the layers below
LowerRef = tuple[int, str]  # (layer index >= 1, path relative to that layer's root)
_MISSING = object()


@dataclass(slots=True)
class Listing:
    """One lower directory: its entries' file types, and the OCI markers in it."""

    kinds: dict[str, int]       # name -> S_IFMT type, or WHITEOUT for a char 0/0 whiteout
    oci_whiteouts: set[str]     # names deleted by a ``.wh.NAME`` entry
    oci_opaque: bool            # a ``.wh..wh..opq`` entry is present


def _read_listing(real: str) -> Listing | None:
    try:
        fd = open_lower(real, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return _listing_of(fd)
    finally:
        os.close(fd)


def _listing_of(fd: int) -> Listing:
    kinds: dict[str, int] = {}
    whiteouts: set[str] = set()
    opaque = False
    with os.scandir(fd) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(ondisk.WHITEOUT_PREFIX):
                if name == ondisk.OCI_OPAQUE_MARKER:
                    opaque = True
                else:
                    whiteouts.add(name[len(ondisk.WHITEOUT_PREFIX):])
                continue
            kinds[name] = _entry_kind(entry)
    return Listing(kinds, whiteouts, opaque)


def _entry_kind(entry: os.DirEntry) -> int:
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    if entry.is_symlink():
        return stat.S_IFLNK
    st = entry.stat(follow_symlinks=False)
    return WHITEOUT if ondisk.is_whiteout(st) else stat.S_IFMT(st.st_mode)


@dataclass(slots=True)
class Found:
    """The result of resolving one name in a merged directory."""

    st: os.stat_result          # lstat of the top-most object
    upper: bool                 # the top-most object is in the upper, at the merged path
    lowers: tuple[LowerRef, ...]  # dirs: lower dirs merged below; others: the lower file, if any
    metacopy: bool = False      # an upper file whose data is still the lower file's

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class LayerStack:
    """Real paths of the layers and the lookup rules that merge them."""

    def __init__(self, upper: str | None, lowers: list[str], *, follow_redirects: bool,
                 cache_lowers: bool = True, metacopy: bool = False) -> None:
        self.roots: list[str | None] = [upper, *lowers]
        self.root_fds = [longpaths.open_root(r) if r is not None else -1 for r in self.roots]
        self.follow_redirects = follow_redirects
        self.lower_count = len(lowers)
        self.cache_lowers = cache_lowers
        self.metacopy = metacopy
        self._listings: dict[LowerRef, Listing | None] = {}
        self._marker_cache: dict[LowerRef, ondisk.DirMarkers] = {}

    @property
    def has_upper(self) -> bool:
        return self.roots[UPPER] is not None

    def real(self, layer: int, path: str) -> str:
        """The backing path of ``path`` in ``layer``, usable whatever its length."""
        root = self.roots[layer]
        assert root is not None
        # longpaths.backing_path's own first test, here: nearly every path passes it
        full = f"{root}/{path}" if path else root
        if len(full) * 4 < longpaths.DIRECT_LIMIT:
            return full
        return longpaths.backing_path(root, self.root_fds[layer], path)

    def upper_path(self, path: str) -> str:
        return self.real(UPPER, path)

    # ------------------------------------------------------------------------------------------

    def resolve_root(self) -> Found:
        top = UPPER if self.has_upper else 1
        st = os.lstat(self.real(top, ""))
        lowers: tuple[LowerRef, ...] = ()
        if not (self.has_upper and ondisk.read_dir_markers(
                self.real(UPPER, ""), follow_redirects=False).opaque):
            lowers = self._root_lower_dirs()
        return Found(st=st, upper=self.has_upper, lowers=lowers)

    def _root_lower_dirs(self) -> tuple[LowerRef, ...]:
        """Root dirs of the lowers, down to the first opaque one."""
        out: list[LowerRef] = []
        for layer in range(1, self.lower_count + 1):
            out.append((layer, ""))
            listing = self.listing(layer, "")
            if (listing is not None and listing.oci_opaque) or ondisk.read_dir_markers(
                    self.real(layer, ""), follow_redirects=False).opaque:
                break
        return tuple(out)

    def resolve(self, parent_path: str, parent_upper: bool,
                parent_lowers: tuple[LowerRef, ...], name: str) -> Found | None:
        """Resolves ``name`` in a merged directory; None when nothing visible has that name."""
        upper_st = None
        redirect = None
        if parent_upper:
            path = join(parent_path, name)
            upper_st = lstat_or_none(self.upper_path(path))
            if upper_st is not None:
                if ondisk.is_whiteout(upper_st):
                    return None
                if not stat.S_ISDIR(upper_st.st_mode):
                    return self._upper_file(path, upper_st, parent_lowers, name)
                if not parent_lowers and not self.follow_redirects:
                    return Found(st=upper_st, upper=True, lowers=())
                markers = ondisk.read_dir_markers(self.upper_path(path),
                                                  follow_redirects=self.follow_redirects)
                if markers.opaque or not (parent_lowers or markers.redirect):
                    return Found(st=upper_st, upper=True, lowers=())
                # An absolute redirect is followed from the root of the lowers even where
                # the parent has no lower part (a directory moved into a new one).
                redirect = markers.redirect
        found_st, lowers = self._resolve_lowers(parent_lowers, name, redirect,
                                                want_dirs_only=upper_st is not None)
        if upper_st is not None:
            return Found(st=upper_st, upper=True, lowers=lowers)
        if found_st is None:
            return None
        return Found(st=found_st, upper=False, lowers=lowers)

    def _upper_file(self, path: str, st: os.stat_result, parent_lowers: tuple[LowerRef, ...],
                    name: str) -> Found:
        """An upper non-directory; with metacopy=on, one whose data is in a lower file."""
        if not (self.metacopy and stat.S_ISREG(st.st_mode) and parent_lowers):
            return Found(st=st, upper=True, lowers=())
        real = self.upper_path(path)
        if not ondisk.is_metacopy(real):
            return Found(st=st, upper=True, lowers=())
        redirect = ondisk.read_redirect(real)
        lower_st, lowers = self._resolve_lowers(parent_lowers, name, redirect,
                                                want_dirs_only=False)
        if lower_st is None or not stat.S_ISREG(lower_st.st_mode):
            raise OSError(errno.EIO, "metacopy file without lower data", real)
        return Found(st=st, upper=True, lowers=lowers, metacopy=True)

    def lower_has(self, parent_lowers: tuple[LowerRef, ...], name: str) -> bool:
        """Whether a lower layer shows something at ``name`` (so removing it needs a whiteout)."""
        st, _ = self._resolve_lowers(parent_lowers, name, None, want_dirs_only=False)
        return st is not None

    def _resolve_lowers(self, parent_lowers: tuple[LowerRef, ...], name: str,
                        redirect: str | None, *, want_dirs_only: bool
                        ) -> tuple[os.stat_result | None, tuple[LowerRef, ...]]:
        """Walks the lowers below a parent for ``name``.

        Returns the top-most lower object's stat and the lower refs that make it up. With
        ``want_dirs_only`` (a directory above already won) only directories merge in, the
        first non-directory stops the walk, and no stat is returned.
        """
        candidates = list(parent_lowers)
        lookup_name = name
        absolute: str | None = None
        if redirect is not None:
            absolute, lookup_name, candidates = self._apply_redirect(
                redirect, candidates, 0, None, lookup_name)
        top_st = None
        merged: list[LowerRef] = []
        k = 0
        while k < len(candidates):
            layer, parent = candidates[k]
            k += 1
            path = absolute if absolute is not None else join(parent, lookup_name)
            kind = self._kind(layer, path)
            if kind is None:
                continue
            if kind == WHITEOUT:
                break
            if kind != stat.S_IFDIR:
                if not merged and not want_dirs_only:
                    return os.lstat(self.real(layer, path)), ((layer, path),)
                break
            if not merged and not want_dirs_only:  # a lower directory wins: its attributes
                top_st = os.lstat(self.real(layer, path))
            merged.append((layer, path))
            if k >= len(candidates):
                break
            markers = self._markers(layer, path)
            if markers.opaque:
                break
            if markers.redirect is not None:
                absolute, lookup_name, candidates = self._apply_redirect(
                    markers.redirect, candidates, layer, absolute, lookup_name)
                k = 0
        return top_st, tuple(merged)

    # --- what a lower layer holds (cached: lowers do not change while mounted) ----------------

    def listing(self, layer: int, path: str) -> Listing | None:
        """The entries of a lower directory, None if it is not a directory."""
        key = (layer, path)
        listing = self._listings.get(key, _MISSING)
        if listing is _MISSING:
            listing = _read_listing(self.real(layer, path))
            if self.cache_lowers:
                self._listings[key] = listing
        return listing

    def _kind(self, layer: int, path: str) -> int | None:
        """File type of a lower entry, WHITEOUT for a whiteout (any form), None if absent."""
        parent, _, name = path.rpartition("/")
        listing = self.listing(layer, parent)
        if listing is None:
            return None
        kind = listing.kinds.get(name)
        if kind is None and name in listing.oci_whiteouts:
            return WHITEOUT
        return kind

    def _markers(self, layer: int, path: str) -> ondisk.DirMarkers:
        """Opaque/redirect of a lower directory; a ``.wh.`` entry beside it makes it opaque."""
        key = (layer, path)
        markers = self._marker_cache.get(key)
        if markers is None:
            markers = ondisk.read_dir_markers(self.real(layer, path),
                                              follow_redirects=self.follow_redirects)
            listing = self.listing(layer, path)
            parent, _, name = path.rpartition("/")
            parent_listing = self.listing(layer, parent)
            shadowed = parent_listing is not None and name in parent_listing.oci_whiteouts
            if (listing is not None and listing.oci_opaque) or shadowed:
                markers = ondisk.DirMarkers(opaque=True, redirect=markers.redirect)
            if self.cache_lowers:
                self._marker_cache[key] = markers
        return markers

    def _apply_redirect(self, redirect: str, candidates: list[LowerRef], layer: int,
                        absolute: str | None, lookup_name: str
                        ) -> tuple[str | None, str, list[LowerRef]]:
        """Follow an ``overlay.redirect``: absolute from the root, or a sibling name."""
        remaining = [c for c in candidates if c[0] > layer]
        if redirect.startswith("/"):
            absolute = redirect.strip("/")
            return absolute, lookup_name, [(i, "") for i in range(layer + 1,
                                                                  self.lower_count + 1)]
        if absolute is not None:
            return join(os.path.dirname(absolute), redirect), lookup_name, remaining
        return None, redirect, remaining


def open_lower(path: str, flags: int) -> int:
    """Opens a lower file without touching it, not even its atime (O_NOATIME where allowed)."""
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
