"""Operation vocabulary for the differential write tests (tests/test_write_differential.py).

An :class:`Op` is one filesystem call (or a short fixed sequence, for the held-fd cases) on a
path relative to a mount root. ``op.apply(root)`` performs it and returns an :data:`Outcome`
that can be compared between two mounts: ``("ok", value)`` or ``("err", "ENOENT")``.

Ops are generated from a :class:`Model` of the paths that exist (taken from a snapshot of the
reference mount) by functions that take a ``pick(options)`` callable, so the same generators
serve hypothesis (``pick`` = ``data.draw(sampled_from(...))``, which shrinks towards the first
option) and plain seeded sequences (``pick`` = ``random.Random(seed).choice``).

Safety: every symlink target used or created is relative and never contains ``..``, so
nothing that follows a symlink can leave the mount; every open uses O_NONBLOCK so a FIFO never
blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tests import mounts

# The same libc renameat2(2) wrapper the filesystem uses (os.rename has no flags).
from unionfs.fs.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

T = TypeVar("T")
Pick = Callable[[Sequence[Any]], Any]
Outcome = tuple[str, Any]

# -- names ------------------------------------------------------------------------------------

LONG_OK = "L" * 255  # the longest valid name
TOO_LONG = "M" * 256  # ENAMETOOLONG
FRESH_NAMES = ("n1", "n2", "n3", LONG_OK)
SYMLINK_TARGETS = ("f1", "n1", "d1", "d1/f1", "nowhere", "sym")
XATTR_NAMES = ("user.a", "user.b", "user.k")
XATTR_VALUES = (b"v1", b"", b"x" * 300)
# Far from "now", so that a time the clock set can never be mistaken for one of these.
TIMES_NS = (
    1_000_000_000_123_456_789,
    0,
    1_234_567_890_999_999_999,
    2_000_000_000_000_000_001,
)
UIDS = (1000, 0, 1234, -1)
GIDS = (1000, 0, 2345, -1)
MODES = (0o644, 0o600, 0o755, 0o4755, 0o2775, 0o1777, 0o000, 0o640)
DATA = (b"hello", b"", b"Y" * 5000, b"0123456789abcdef" * 4096)
OFFSETS = (0, 3, 4100, 70000)
LENGTHS = (0, 2, 100, 70000)

# name -> open(2) flags; the first is the most ordinary (hypothesis shrinks towards it)
OPEN_FLAGS = {
    "WRONLY|CREAT": os.O_WRONLY | os.O_CREAT,
    "WRONLY|CREAT|EXCL": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "WRONLY|CREAT|TRUNC": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "RDWR|CREAT|APPEND": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "WRONLY|APPEND": os.O_WRONLY | os.O_APPEND,
    "WRONLY|TRUNC": os.O_WRONLY | os.O_TRUNC,
    "RDWR": os.O_RDWR,
    "RDONLY|CREAT": os.O_RDONLY | os.O_CREAT,
}


def short(value: Any) -> str:
    """repr() with long names and long data abbreviated, for readable op listings."""
    if isinstance(value, bytes) and len(value) > 16:
        return f"<{len(value)} bytes {value[:8]!r}...>"
    text = repr(value)
    return text.replace(LONG_OK, "L*255").replace(TOO_LONG, "M*256")


def _describe_data(data: bytes) -> str:
    """Compact, comparable description of bytes read back."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"{len(data)}B sha={digest} head={data[:24]!r}"


# -- ops --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` names an implementation below, ``args`` are its arguments."""

    kind: str
    args: tuple

    def apply(self, root: str) -> Outcome:
        return outcome_of(lambda: _IMPLS[self.kind](root, *self.args))

    def __str__(self) -> str:
        octal = _MODE_ARG.get(self.kind)
        args = (str(a) if isinstance(a, Op) else oct(a) if i == octal else short(a)
                for i, a in enumerate(self.args))
        return f"{self.kind}({', '.join(args)})"


_MODE_ARG = {"create": 2, "mkdir": 1, "mkfifo": 1, "chmod": 1}  # printed in octal


def outcome_of(fn: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


def full(root: str, rel: str) -> str:
    return os.path.join(root, rel) if rel else root


def _open(root: str, rel: str, flags: int, mode: int = 0o644) -> int:
    return os.open(full(root, rel), flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)


def _create(root: str, rel: str, flags_name: str, mode: int, data: bytes) -> int | None:
    flags = OPEN_FLAGS[flags_name]
    fd = _open(root, rel, flags, mode)
    try:
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return None
        return os.write(fd, data)
    finally:
        os.close(fd)


def _write_at(root: str, rel: str, offset: int, data: bytes) -> int:
    fd = _open(root, rel, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _truncate(root: str, rel: str, length: int) -> None:
    os.truncate(full(root, rel), length)


def _mkdir(root: str, rel: str, mode: int) -> None:
    os.mkdir(full(root, rel), mode)


def _mkfifo(root: str, rel: str, mode: int) -> None:
    os.mknod(full(root, rel), stat.S_IFIFO | mode)


def _symlink(root: str, target: str, rel: str) -> None:
    os.symlink(target, full(root, rel))


def _link(root: str, src: str, dst: str) -> None:
    os.link(full(root, src), full(root, dst), follow_symlinks=False)


def _unlink(root: str, rel: str) -> None:
    os.unlink(full(root, rel))


def _rmdir(root: str, rel: str) -> None:
    os.rmdir(full(root, rel))


RENAME_FLAGS = {"0": 0, "NOREPLACE": RENAME_NOREPLACE, "EXCHANGE": RENAME_EXCHANGE}


def _rename(root: str, src: str, dst: str, flags_name: str) -> None:
    renameat2(full(root, src), full(root, dst), RENAME_FLAGS[flags_name])


def _chmod(root: str, rel: str, mode: int) -> None:
    os.chmod(full(root, rel), mode)


def _chown(root: str, rel: str, uid: int, gid: int, follow: bool) -> None:
    os.chown(full(root, rel), uid, gid, follow_symlinks=follow)


def _utime(root: str, rel: str, atime_ns: int, mtime_ns: int, follow: bool) -> int:
    path = full(root, rel)
    os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=follow)
    return os.stat(path, follow_symlinks=follow).st_mtime_ns


XATTR_FLAGS = {"0": 0, "CREATE": os.XATTR_CREATE, "REPLACE": os.XATTR_REPLACE}


def _setxattr(root: str, rel: str, name: str, value: bytes, flags_name: str, follow: bool) -> None:
    os.setxattr(full(root, rel), name, value, XATTR_FLAGS[flags_name], follow_symlinks=follow)


def _removexattr(root: str, rel: str, name: str, follow: bool) -> None:
    os.removexattr(full(root, rel), name, follow_symlinks=follow)


def _read(root: str, rel: str) -> str:
    fd = _open(root, rel, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return _describe_data(b"".join(chunks))
    finally:
        os.close(fd)


def _listdir(root: str, rel: str) -> list[str]:
    return sorted(os.listdir(full(root, rel)))


def _held(root: str, rel: str, mode_name: str, inner: Op, data: bytes) -> tuple:
    """Open ``rel`` first, run ``inner``, then (write ``data`` through the fd and) read via it.

    The kernel guarantees (since 4.19) that an fd opened before a copy-up sees the data
    written afterwards; an fd open for write keeps working after unlink/rename of its name.
    """
    flags = os.O_RDONLY if mode_name == "RDONLY" else os.O_RDWR
    fd = _open(root, rel, flags)
    try:
        inner_outcome = inner.apply(root)
        written = None
        if mode_name == "RDWR":
            written = outcome_of(lambda: os.pwrite(fd, data, 1))
        read = outcome_of(lambda: _describe_data(os.pread(fd, 1 << 20, 0)))
        size = outcome_of(lambda: os.fstat(fd).st_size)
        return (inner_outcome, written, read, size)
    finally:
        os.close(fd)


_IMPLS: dict[str, Callable[..., Any]] = {
    "create": _create,
    "write_at": _write_at,
    "truncate": _truncate,
    "mkdir": _mkdir,
    "mkfifo": _mkfifo,
    "symlink": _symlink,
    "link": _link,
    "unlink": _unlink,
    "rmdir": _rmdir,
    "rename": _rename,
    "chmod": _chmod,
    "chown": _chown,
    "utime": _utime,
    "setxattr": _setxattr,
    "removexattr": _removexattr,
    "read": _read,
    "listdir": _listdir,
    "held": _held,
}


# -- the path model ---------------------------------------------------------------------------


class Model:
    """The paths visible in the reference mount, by type (from a treesnap snapshot)."""

    def __init__(self, snap: dict[str, Any]) -> None:
        entries = snap["entries"]
        self.all = sorted(entries)
        self.dirs = [""] + [p for p in self.all if entries[p]["type"] == stat.S_IFDIR]
        self.files = [p for p in self.all if entries[p]["type"] == stat.S_IFREG]
        self.symlinks = [p for p in self.all if entries[p]["type"] == stat.S_IFLNK]
        self.nondirs = [p for p in self.all if entries[p]["type"] != stat.S_IFDIR]

    def odd_paths(self) -> list[str]:
        """Paths that should fail or go through symlinks: ENOTDIR, ENOENT, ENAMETOOLONG."""
        out = ["missing/n1", TOO_LONG, f"d1/{TOO_LONG}"]
        out += [f"{p}/n1" for p in self.nondirs[:3]]
        out += [f"{p}/f1" for p in self.symlinks] + [f"{p}/n1" for p in self.symlinks]
        return out


def pick_path(pick: Pick, model: Model, cats: str) -> str:
    """Pick a path; ``cats`` lists categories with repetition as weights, most ordinary first.

    f = existing regular file, d = existing dir (not root), a = any existing path,
    n = a fresh name in an existing dir, o = an odd path (see Model.odd_paths), r = the root.
    """
    cat = pick(cats)
    if cat == "r":
        return ""
    pools = {
        "f": model.files,
        "d": model.dirs[1:],
        "a": model.all,
        "o": model.odd_paths(),
    }
    pool = pools.get(cat)
    if pool:
        return pick(pool)
    parent = pick(model.dirs)
    name = pick(FRESH_NAMES)
    return f"{parent}/{name}" if parent else name


# -- generators: one per op kind --------------------------------------------------------------


def gen_create(pick: Pick, m: Model) -> Op:
    path = pick_path(pick, m, "nnfao")
    return Op("create", (path, pick(list(OPEN_FLAGS)), pick(MODES[:3]), pick(DATA)))


def gen_write_at(pick: Pick, m: Model) -> Op:
    return Op("write_at", (pick_path(pick, m, "fffao"), pick(OFFSETS), pick(DATA)))


def gen_truncate(pick: Pick, m: Model) -> Op:
    return Op("truncate", (pick_path(pick, m, "ffao"), pick(LENGTHS)))


def gen_mkdir(pick: Pick, m: Model) -> Op:
    return Op("mkdir", (pick_path(pick, m, "nnnao"), pick((0o755, 0o700, 0o2775))))


def gen_mkfifo(pick: Pick, m: Model) -> Op:
    return Op("mkfifo", (pick_path(pick, m, "nnao"), 0o644))


def gen_symlink(pick: Pick, m: Model) -> Op:
    return Op("symlink", (pick(SYMLINK_TARGETS), pick_path(pick, m, "nnao")))


def gen_link(pick: Pick, m: Model) -> Op:
    return Op("link", (pick_path(pick, m, "ffao"), pick_path(pick, m, "nnao")))


def gen_unlink(pick: Pick, m: Model) -> Op:
    return Op("unlink", (pick_path(pick, m, "aafdno"),))


def gen_rmdir(pick: Pick, m: Model) -> Op:
    return Op("rmdir", (pick_path(pick, m, "ddano"),))


def gen_rename(pick: Pick, m: Model) -> Op:
    src = pick_path(pick, m, "dadfo")
    dst = pick_path(pick, m, "nnadfo")
    return Op("rename", (src, dst, pick(list(RENAME_FLAGS))))


def gen_chmod(pick: Pick, m: Model) -> Op:
    return Op("chmod", (pick_path(pick, m, "afdor"), pick(MODES)))


def gen_chown(pick: Pick, m: Model) -> Op:
    path = pick_path(pick, m, "afdor")
    return Op("chown", (path, pick(UIDS), pick(GIDS), pick((True, False))))


def gen_utime(pick: Pick, m: Model) -> Op:
    path = pick_path(pick, m, "afdor")
    return Op("utime", (path, pick(TIMES_NS), pick(TIMES_NS), pick((True, False))))


def gen_setxattr(pick: Pick, m: Model) -> Op:
    path = pick_path(pick, m, "afdor")
    flags = pick(list(XATTR_FLAGS))
    return Op("setxattr", (path, pick(XATTR_NAMES), pick(XATTR_VALUES), flags, pick((True, False))))


def gen_removexattr(pick: Pick, m: Model) -> Op:
    path = pick_path(pick, m, "afdor")
    return Op("removexattr", (path, pick(XATTR_NAMES), pick((True, False))))


def gen_read(pick: Pick, m: Model) -> Op:
    return Op("read", (pick_path(pick, m, "ffao"),))


def gen_listdir(pick: Pick, m: Model) -> Op:
    return Op("listdir", (pick_path(pick, m, "ddrao"),))


def gen_held(pick: Pick, m: Model) -> Op:
    """An fd held open across a data-changing op on the same (or a hard-linked) file."""
    path = pick_path(pick, m, "ffo")
    # With passthrough, a read-only fd reads its lower file, and a write of that file waits
    # for it to close (tests/test_passthrough.py): the RDONLY case is the runs without it.
    mode_name = pick(("RDWR",) if mounts.PASSTHROUGH else ("RDONLY", "RDWR"))
    inner_path = path if pick(("same", "other")) == "same" else pick_path(pick, m, "f")
    kind = pick(("write_at", "truncate", "create", "rename", "unlink", "link", "chmod"))
    if kind == "write_at":
        inner = Op(kind, (inner_path, pick(OFFSETS), pick(DATA)))
    elif kind == "truncate":
        inner = Op(kind, (inner_path, pick(LENGTHS)))
    elif kind == "create":
        inner = Op(kind, (inner_path, pick(("WRONLY|TRUNC", "RDWR|CREAT|APPEND")), 0o644,
                          pick(DATA)))
    elif kind in ("rename", "link"):
        inner = Op(kind, (inner_path, pick_path(pick, m, "na"))
                   + (("0",) if kind == "rename" else ()))
    elif kind == "unlink":
        inner = Op(kind, (inner_path,))
    else:
        inner = Op(kind, (inner_path, pick(MODES)))
    return Op("held", (path, mode_name, inner, pick(DATA[:3])))


GENERATORS: dict[str, Callable[[Pick, Model], Op]] = {
    "create": gen_create,
    "write_at": gen_write_at,
    "truncate": gen_truncate,
    "mkdir": gen_mkdir,
    "mkfifo": gen_mkfifo,
    "symlink": gen_symlink,
    "link": gen_link,
    "unlink": gen_unlink,
    "rmdir": gen_rmdir,
    "rename": gen_rename,
    "chmod": gen_chmod,
    "chown": gen_chown,
    "utime": gen_utime,
    "setxattr": gen_setxattr,
    "removexattr": gen_removexattr,
    "read": gen_read,
    "listdir": gen_listdir,
    "held": gen_held,
}


def random_op(pick: Pick, m: Model) -> Op:
    """Any op, kind chosen first (for seeded plain sequences)."""
    return GENERATORS[pick(sorted(GENERATORS))](pick, m)
