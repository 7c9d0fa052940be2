"""Deterministic generator of overlay layer stacks on disk, for differential tests.

``make_stack(root, seed)`` writes a small stack of lower layers (a few hundred entries) built from
a seeded ``random.Random``: nested dirs, files of varied size/mode/owner, symlinks (some
dangling), hard links within a layer, ``user.*`` xattrs, fifos, device nodes, empty files; and
across layers: file over file, file over dir, dir over file, dir merging with dir, whiteouts and
opaque dirs. The same seed gives the same logical stack in both on-disk forms:

- ``form="kernel"``: whiteout = char device 0:0, opaque = ``trusted.overlay.opaque=y``;
- ``form="oci"``: whiteout = regular file ``.wh.NAME``, opaque = file ``.wh..wh..opq``.

Whiteouts are only written where they mean something: inside a directory of the layer that
merges with the layers below (the kernel lists whiteouts found in a non-merged directory as
unstat-able entries, so no real tool writes them there). Some dirs also carry
``trusted.overlay.impure=y``, which must never show through a mount.

``expected_snapshot(lowers, form)`` resolves the stack straight from the disk (lookup rules of
union-semantics.md §3.1-3.4) into the shape of ``treesnap.snapshot``: a third witness besides the
kernel and fuse-overlayfs, used to validate the generator and for the OCI form.
"""

from __future__ import annotations

import os
import random
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xattr

from tests import treesnap

OPAQUE_XATTR = "trusted.overlay.opaque"
WH_PREFIX = ".wh."
OCI_OPAQUE = ".wh..wh..opq"
IDS = (0, 1000, 1001, 1002, 1003)
FILE_MODES = (0o644, 0o644, 0o600, 0o755, 0o400, 0o640, 0o444, 0o700, 0o4755, 0o2755, 0o000)
DIR_MODES = (0o755, 0o755, 0o700, 0o750, 0o775, 0o1777, 0o2775, 0o555, 0o711)
ROOT_MODES = (0o755, 0o775, 0o751, 0o711)
WORDS = ("alpha", "beta", "gamma", "delta", "etc", "usr", "lib", "bin", "data", "cfg",
         "readme", "Makefile", "x", "a b", "caf\u00e9", "z\u00fcrich", "-dash", "_u", "UPPER",
         "dots.in.name", "n", ".hidden", ".wh", ".whx", "wh.", " lead", "trail ", "tab\tname",
         "new\nline", "bad\udcffbytes", "\u65e5\u672c", "#hash", "colon:name", "back\\slash")
BASE_TIME_NS = 1_600_000_000 * 10**9
Kind = str  # "dir" "file" "hardlink" "symlink" "fifo" "chr" "blk" "whiteout"


@dataclass
class Spec:
    """One object of one layer. ``target``: symlink target, or the primary path of a hard link."""

    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    opaque: bool = False
    mtime_ns: int = BASE_TIME_NS


Layer = dict[str, Spec]  # relative path ("" = layer root) -> object


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _inside(path: str, top: str) -> bool:
    """True if ``path`` is ``top`` or below it."""
    return path == top or top == "" or path.startswith(top + "/")


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counter = 0
        self.budget = 0

    # --- small random pieces -------------------------------------------------------------
    def fresh_name(self) -> str:
        self.counter += 1
        r = self.rng.random()
        word = self.rng.choice(WORDS)
        if r < 0.03:
            return f"long-{self.counter}-" + "L" * 180
        if r < 0.25:
            return f"{word}{self.counter}.{self.rng.choice(('txt', 'conf', 'so', 'py'))}"
        return f"{word}{self.counter}"

    def owner(self) -> tuple[int, int]:
        return self.rng.choice(IDS), self.rng.choice(IDS)

    def mtime(self) -> int:
        return BASE_TIME_NS + self.rng.randrange(0, 10**8) * 10**9 + self.rng.randrange(10**9)

    def xattrs(self, chance: float) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if self.rng.random() < chance:
            for _ in range(self.rng.randint(1, 3)):
                name = f"user.{self.rng.choice(('mime', 'tag', 'k', 'origin.note'))}{self.counter}"
                self.counter += 1
                out[name] = self.rng.randbytes(self.rng.choice((0, 1, 7, 40, 200)))
        if self.rng.random() < chance / 10:
            out["user.big"] = self.rng.randbytes(3000)
        if self.rng.random() < chance / 4:
            out[f"trusted.test{self.counter}"] = b"root-only"
        return out

    def data(self) -> bytes:
        r = self.rng.random()
        if r < 0.15:
            return b""
        if r < 0.6:
            return self.rng.randbytes(self.rng.randint(1, 100))
        if r < 0.93:
            return self.rng.randbytes(self.rng.randint(100, 9000))
        return self.rng.randbytes(self.rng.randint(60_000, 200_000))

    def dir_spec(self, opaque: bool = False, root: bool = False) -> Spec:
        uid, gid = self.owner()
        xs = self.xattrs(0.3)
        if self.rng.random() < 0.1:
            xs["trusted.overlay.impure"] = b"y"
        if not opaque and self.rng.random() < 0.05:
            xs[OPAQUE_XATTR] = b"n"  # not "y": not opaque, and still private
        mode = self.rng.choice(ROOT_MODES if root else DIR_MODES)
        return Spec("dir", mode, uid, gid, xattrs=xs, opaque=opaque, mtime_ns=self.mtime())

    def leaf_spec(self) -> Spec:
        """A random non-directory (mostly regular files)."""
        self.budget -= 1
        uid, gid = self.owner()
        r = self.rng.random()
        if r < 0.68:
            return Spec("file", self.rng.choice(FILE_MODES), uid, gid, data=self.data(),
                        xattrs=self.xattrs(0.3), mtime_ns=self.mtime())
        if r < 0.88:
            targets = ("alpha1", "../etc", "/etc/hostname", "does/not/exist", "..", ".",
                       "T" * 150, "caf\u00e9", "bad\udcfe", "d/" * 600 + "end", ".wh.x")
            return Spec("symlink", 0o777, uid, gid, target=self.rng.choice(targets),
                        mtime_ns=self.mtime())
        if r < 0.96:
            return Spec("fifo", self.rng.choice((0o644, 0o600, 0o666)), uid, gid,
                        mtime_ns=self.mtime())
        kind = self.rng.choice(("chr", "blk"))
        rdev = (1, 3) if kind == "chr" else (7, self.rng.randint(0, 7))
        return Spec(kind, 0o600, uid, gid, rdev=rdev, mtime_ns=self.mtime())

    def whiteout_spec(self) -> Spec:
        """Kernel whiteouts are 0000 and often share one inode; fuse-overlayfs makes 0700."""
        shared = "shared" if self.rng.random() < 0.4 else ""
        return Spec("whiteout", self.rng.choice((0o000, 0o000, 0o700, 0o644)), target=shared)

    # --- trees -----------------------------------------------------------------------------
    def subtree(self, layer: Layer, path: str, depth: int, opaque: bool = False,
                reuse: tuple[str, ...] = ()) -> None:
        """A fresh directory at ``path`` with random content (``reuse``: names to use first)."""
        self.budget -= 1
        if path and self.rng.random() < 0.05:
            opaque = True  # marks a dir that merges with nothing: no effect but must be hidden
        layer[path] = self.dir_spec(opaque=opaque, root=path == "")
        width = self.rng.randint(1, 7) if depth > 0 else self.rng.randint(0, 4)
        names = list(reuse[: self.rng.randint(0, len(reuse))])
        names += [self.fresh_name() for _ in range(width)]
        for name in names:
            child = _join(path, name)
            if self.budget <= 0:
                break
            if depth > 0 and self.rng.random() < 0.3:
                self.subtree(layer, child, depth - 1)
            else:
                layer[child] = self.leaf_spec()

    def add_hard_links(self, layer: Layer, count: int) -> None:
        """Give ``count`` regular files of the layer a second name in some dir of the layer."""
        files = sorted(p for p, s in layer.items() if s.kind == "file")
        dirs = sorted(p for p, s in layer.items() if s.kind == "dir")
        for primary in self.rng.sample(files, min(count, len(files))):
            for _ in range(self.rng.choice((1, 1, 2))):
                layer[_join(self.rng.choice(dirs), self.fresh_name())] = Spec(
                    "hardlink", target=primary)

    def bottom_layer(self, size: int) -> Layer:
        layer: Layer = {}
        self.budget = size
        self.subtree(layer, "", depth=4)
        deep = ""
        for i in range(self.rng.randint(10, 20)):
            deep = _join(deep, f"d{i}-{self.fresh_name()[:10]}")
            layer[deep] = self.dir_spec()
        layer[_join(deep, "bottom")] = self.leaf_spec()
        while self.budget > 0:  # fill up to the size in random existing dirs
            dirs = sorted(p for p, s in layer.items() if s.kind == "dir")
            parent = self.rng.choice(dirs)
            if self.rng.random() < 0.2:
                self.subtree(layer, _join(parent, self.fresh_name()), 1)
            else:
                layer[_join(parent, self.fresh_name())] = self.leaf_spec()
        self.add_hard_links(layer, 4)
        return layer

    def upper_layer(self, view: dict[str, str], ops: int) -> Layer:
        """A layer to put above the merged ``view`` ({path: "dir"|"other"}), ``ops`` changes."""
        layer: Layer = {"": self.dir_spec(root=True)}
        claimed: list[str] = []  # paths replaced/whited out by an op: nothing else may touch them

        def free(path: str) -> bool:
            return not any(_inside(path, c) for c in claimed)

        def merge_chain(path: str) -> None:
            parts = path.split("/") if path else []
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i])
                if p not in layer:
                    layer[p] = self.dir_spec()

        kinds = ("new", "file_over_file", "file_over_dir", "dir_over_file", "merge",
                 "whiteout", "whiteout_missing", "opaque")
        todo = list(kinds) + self.rng.choices(kinds, (3, 4, 2, 2, 2, 4, 1, 2), k=ops)
        for op in todo:
            live = [p for p in sorted(view) if p and free(p)]
            pool = {
                "file_over_file": [p for p in live if view[p] != "dir" and p not in layer],
                "dir_over_file": [p for p in live if view[p] != "dir" and p not in layer],
                "file_over_dir": [p for p in live if view[p] == "dir" and p not in layer],
                "opaque": [p for p in live if view[p] == "dir" and p not in layer],
                "merge": [p for p in live if view[p] == "dir"],
                "whiteout": [p for p in live if p not in layer],
            }.get(op)
            if pool:
                target = self.rng.choice(pool)
                parent = _parent(target)
            else:
                op = "new" if pool is not None else op
                parent = self.rng.choice([""] + [p for p in live if view[p] == "dir"])
                target = _join(parent, self.fresh_name())
            merge_chain(parent)
            if op == "merge":
                merge_chain(target)
                layer[_join(target, self.fresh_name())] = self.leaf_spec()
                continue
            claimed.append(target)
            if op in ("whiteout", "whiteout_missing"):
                layer[target] = self.whiteout_spec()
            elif op == "opaque":
                below = tuple(p.rpartition("/")[2] for p in sorted(view)
                              if _parent(p) == target)
                self.subtree(layer, target, 1, opaque=True, reuse=below)
            elif op == "dir_over_file" or (op == "new" and self.rng.random() < 0.25):
                self.subtree(layer, target, 1)
            else:
                layer[target] = self.leaf_spec()
        self.add_hard_links(layer, 2)
        return layer


def apply_layer(view: dict[str, str], layer: Layer) -> None:
    """Put ``layer`` on top of the merged ``view`` ({path: "dir"|"other"}), in place."""

    def drop(path: str) -> None:
        for p in [p for p in view if _inside(p, path)]:
            del view[p]

    for path in sorted(layer):
        spec = layer[path]
        if path == "":
            view[""] = "dir"
        elif spec.kind == "whiteout":
            drop(path)
        elif spec.kind == "dir":
            if spec.opaque or view.get(path) != "dir":
                drop(path)
            view[path] = "dir"
        else:
            drop(path)
            view[path] = "other"


# --- writing to disk -----------------------------------------------------------------------
def _set_meta(path: Path, spec: Spec) -> None:
    for name, value in spec.xattrs.items():
        xattr.setxattr(str(path), name, value, symlink=True)
    os.chown(path, spec.uid, spec.gid, follow_symlinks=False)
    if spec.kind != "symlink":
        os.chmod(path, spec.mode)  # after chown, which clears set-id bits


def _create(path: Path, spec: Spec, form: str) -> None:
    if spec.kind == "dir":
        path.mkdir(mode=0o700)
        if spec.opaque and form == "kernel":
            xattr.setxattr(str(path), OPAQUE_XATTR, b"y")
        elif spec.opaque:
            (path / OCI_OPAQUE).write_bytes(b"")
    elif spec.kind == "file":
        path.write_bytes(spec.data)
    elif spec.kind == "symlink":
        os.symlink(spec.target, path)
    elif spec.kind == "fifo":
        os.mkfifo(path, 0o600)
    elif spec.kind in ("chr", "blk"):
        kind = stat.S_IFCHR if spec.kind == "chr" else stat.S_IFBLK
        os.mknod(path, kind | 0o600, os.makedev(*spec.rdev))
    elif spec.kind == "whiteout" and form == "kernel":
        os.mknod(path, stat.S_IFCHR | spec.mode, os.makedev(0, 0))
    elif spec.kind == "whiteout":
        marker = path.parent / (WH_PREFIX + path.name)
        marker.write_bytes(b"")
        marker.chmod(spec.mode)


def write_layer(root: Path, layer: Layer, form: str) -> None:
    """Create ``layer`` under ``root`` (which must not exist yet) in the given form."""
    shared_whiteout: Path | None = None
    for rel in sorted(layer):
        spec = layer[rel]
        if spec.kind == "whiteout" and spec.target and form == "kernel" and shared_whiteout:
            os.link(shared_whiteout, root / rel)  # like the kernel's shared whiteout inode
        elif spec.kind != "hardlink":
            _create(root / rel if rel else root, spec, form)
        if spec.kind == "whiteout" and spec.target and shared_whiteout is None:
            shared_whiteout = root / rel
    for rel in sorted(layer):
        if layer[rel].kind == "hardlink":
            os.link(root / layer[rel].target, root / rel)
    for rel in sorted(layer, reverse=True):  # children before their dir (mtimes)
        spec, path = layer[rel], root / rel if rel else root
        if spec.kind in ("hardlink", "whiteout"):
            continue
        _set_meta(path, spec)
        ns = (spec.mtime_ns, spec.mtime_ns)
        os.utime(path, ns=ns, follow_symlinks=False)


def make_layers(seed: int, layers: int = 3, size: int = 180, ops: int = 24) -> list[Layer]:
    """The logical stack for ``seed``, top-most layer first."""
    if layers < 1:
        raise ValueError("a stack needs at least one layer")
    gen = _Generator(seed)
    stack = [gen.bottom_layer(size)]
    view: dict[str, str] = {}
    apply_layer(view, stack[0])
    for _ in range(layers - 1):
        stack.append(gen.upper_layer(view, ops))
        apply_layer(view, stack[-1])
    return stack[::-1]


def make_stack(root: Path, seed: int, layers: int = 3, form: str = "kernel") -> list[Path]:
    """Write the stack for ``seed`` below ``root``; returns the lower dirs, top-most first."""
    if form not in ("kernel", "oci"):
        raise ValueError(f"unknown form {form!r}")
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, layer in enumerate(make_layers(seed, layers)):
        path = root / f"layer{i}"
        write_layer(path, layer, form)
        out.append(path)
    return out


def make_wide_stack(root: Path, seed: int, names: int = 2000, form: str = "kernel") -> list[Path]:
    """Three layers merging into one dir ``big`` with about ``names`` visible entries.

    The top layers override some names of the layers below, and white out others. One name in
    four is about 200 bytes long, so directory pages fill at many different points.
    """
    rng = random.Random(seed)
    share = names // 2
    bottom = {f"entry-{i:05d}" + ("-" + "w" * rng.randint(150, 230) if i % 4 == 0 else "")
              for i in range(share + names // 10)}
    middle = {f"mid-{i:05d}" for i in range(share // 2)} | set(rng.sample(sorted(bottom), 200))
    top = {f"top-{i:05d}" for i in range(names - share - share // 2)}
    top |= set(rng.sample(sorted(middle), 150))
    whiteouts = set(rng.sample(sorted(bottom - middle - top), names // 10))
    layers: list[Layer] = []
    for entries, wh in ((top, whiteouts), (middle, set()), (bottom, set())):
        layer: Layer = {"": Spec("dir", 0o755), "big": Spec("dir", 0o755)}
        for name in sorted(entries):
            layer[f"big/{name}"] = Spec("file", 0o644, data=name.encode())
        for name in sorted(wh):
            layer[f"big/{name}"] = Spec("whiteout")
        layers.append(layer)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, layer in enumerate(layers):
        write_layer(root / f"layer{i}", layer, form)
        out.append(root / f"layer{i}")
    return out


# --- resolving a stack from disk ---------------------------------------------------------------
def _is_whiteout(path: Path, st: os.stat_result, form: str) -> bool:
    if form == "kernel":
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    return path.name.startswith(WH_PREFIX)


def _is_opaque(path: Path, form: str) -> bool:
    if form == "kernel":
        try:
            return xattr.getxattr(str(path), OPAQUE_XATTR) == b"y"
        except OSError:
            return False
    return (path / OCI_OPAQUE).exists()


def _lookup(dirs: list[Path], name: str, form: str) -> list[Path]:
    """Real objects that make up merged ``name`` in the merged dir ``dirs`` (top-down).

    Empty: hidden. One non-dir: that object. Dirs: the dirs to merge, cut at an opaque one.
    """
    found: list[Path] = []
    for d in dirs:
        path = d / name
        if form == "oci" and (d / (WH_PREFIX + name)).exists():
            return found
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if _is_whiteout(path, st, form):
            return found
        if not stat.S_ISDIR(st.st_mode):
            return found or [path]
        found.append(path)
        if _is_opaque(path, form):
            return found
    return found


def merged_view(lowers: list[Path], form: str = "kernel") -> dict[str, Path]:
    """{relative path: real object providing it} for a read-only union of ``lowers``."""
    out: dict[str, Path] = {}
    pending: list[tuple[str, list[Path]]] = [("", list(lowers))]
    while pending:
        rel, dirs = pending.pop()
        names = sorted({n for d in dirs for n in os.listdir(d)})
        for name in names:
            if form == "oci" and name.startswith(WH_PREFIX):
                continue
            found = _lookup(dirs, name, form)
            if not found:
                continue
            child = _join(rel, name)
            out[child] = found[0]
            if found[0].is_dir() and not found[0].is_symlink():
                pending.append((child, found))
    return out


def expected_snapshot(lowers: list[Path], form: str = "kernel", *,
                      times: bool = False) -> dict[str, Any]:
    """What ``treesnap.snapshot`` should give for a read-only union mount of ``lowers``."""
    entries: dict[str, Any] = {}
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for rel, real in sorted(merged_view(lowers, form).items()):
        st = os.lstat(real)
        entries[rel] = treesnap.describe(str(real), st, times=times)
        if not stat.S_ISDIR(st.st_mode):
            groups[(st.st_dev, st.st_ino)].append(rel)
    links = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return {"entries": entries, "links": links}
