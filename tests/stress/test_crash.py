"""Crash consistency: SIGKILL the daemon in the middle of a write-heavy workload, remount, check.

A thread runs random operations through the mount — writes to large lower files (copy-up),
appends, truncates, creates, deletes (whiteouts), file and directory renames (redirects),
new hard links and writes to lower hard links (hard-link copy-up), each data change fsync'ed —
and keeps a model of the tree: every operation that returned is applied to it. After a random
delay the daemon (our child, by pid) is killed; the thread's operation in flight is the only
one allowed to be either done or not (or, for data, partly written). After unmounting the dead
mount and remounting, the merged view must equal the model: every completed operation is
there, no file shows a partial copy-up (a file is either its lower content or what was written
in full), no private file shows in the merged view, the workdir's leftovers are gone, hard
links are still one file. Kernel overlayfs over the same upper (fresh workdir) must show the
same tree as pyunion, and the lower layer must be byte-identical to before.

Every ``KILLS_PER_UPPER`` kills the run starts over with a fresh upper, so copy-ups of the large
lower files keep happening throughout.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import treesnap
from tests.stress.conftest import daemon_mounted, fresh_dir, kernel_overlay, size

UPPERS = size(1, 16)
KILLS_PER_UPPER = size(6, 10)
BIG_FILES = size(4, 6)
BIG_SIZE = size(4 << 20, 8 << 20)
KERNEL_EVERY = size(1, 3)  # compare with kernel overlayfs after every n-th kill
DELAY = (0.05, 0.6)  # seconds of workload before the kill


# -- model ------------------------------------------------------------------------------------


@dataclass
class Model:
    """Files (path -> content; hard links share one bytearray) and directories."""

    files: dict[str, bytearray] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    counter: int = 0

    def copy(self) -> Model:
        memo: dict[int, bytearray] = {}
        files = {p: memo.setdefault(id(b), bytearray(b)) for p, b in self.files.items()}
        return Model(files, set(self.dirs), self.counter)

    def fresh(self, parent: str) -> str:
        self.counter += 1
        name = f"n{self.counter}"
        return f"{parent}/{name}" if parent else name

    def link_groups(self) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for path, content in self.files.items():
            groups.setdefault(id(content), []).append(path)
        return [sorted(g) for g in groups.values() if len(g) > 1]


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _moved(path: str, old: str, new: str) -> str:
    return new + path[len(old):]


@dataclass
class Op:
    kind: str
    path: str
    other: str = ""
    off: int = 0
    data: bytes = b""

    def __str__(self) -> str:
        return f"{self.kind}({self.path!r}, {self.other!r}, off={self.off}, {len(self.data)}B)"


def _write_into(content: bytearray, off: int, data: bytes) -> None:
    if off > len(content):
        content.extend(bytes(off - len(content)))
    content[off:off + len(data)] = data


def apply(model: Model, op: Op) -> None:
    """What ``op`` does to the tree, once it has returned."""
    if op.kind in ("write", "append"):
        _write_into(model.files[op.path], op.off, op.data)
    elif op.kind == "truncate":
        content = model.files[op.path]
        if op.off < len(content):
            del content[op.off:]
        else:
            content.extend(bytes(op.off - len(content)))
    elif op.kind == "create":
        model.files[op.path] = bytearray(op.data)
    elif op.kind == "delete":
        del model.files[op.path]
    elif op.kind == "link":
        model.files[op.other] = model.files[op.path]
    elif op.kind == "rename_file":
        model.files[op.other] = model.files.pop(op.path)
    elif op.kind == "mkdir":
        model.dirs.add(op.path)
    elif op.kind == "rename_dir":
        model.dirs = {_moved(d, op.path, op.other) if _within(d, op.path) else d
                      for d in model.dirs}
        model.files = {_moved(p, op.path, op.other) if _within(p, op.path) else p: c
                       for p, c in model.files.items()}
    else:
        raise ValueError(op.kind)


def perform(mnt: Path, op: Op) -> None:
    """Does ``op`` through the mount; data changes are fsync'ed before it counts as done."""
    p = str(mnt / op.path)
    if op.kind in ("write", "append", "create"):
        flags = {"write": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND,
                 "create": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[op.kind]
        fd = os.open(p, flags, 0o644)
        try:
            done = 0
            while done < len(op.data):
                chunk = op.data[done:done + (1 << 20)]
                if op.kind == "write":
                    done += os.pwrite(fd, chunk, op.off + done)
                else:
                    done += os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    elif op.kind == "truncate":
        os.truncate(p, op.off)
    elif op.kind == "delete":
        os.unlink(p)
    elif op.kind == "link":
        os.link(p, mnt / op.other)
    elif op.kind in ("rename_file", "rename_dir"):
        os.rename(p, mnt / op.other)
    elif op.kind == "mkdir":
        os.mkdir(p)
    else:
        raise ValueError(op.kind)


def choose(model: Model, rng: random.Random) -> Op:
    files = sorted(model.files)
    big = [f for f in files if f.startswith("big/")]
    dirs = sorted(model.dirs)
    kind = rng.choice(["write"] * 5 + ["append"] * 2 + ["truncate", "create", "create",
                      "delete", "delete", "rename_file", "rename_file", "rename_dir",
                      "rename_dir", "mkdir", "link"])
    if not files:
        kind = "create"
    target = rng.choice(big) if big and rng.random() < 0.5 else rng.choice(files or [""])
    parent = rng.choice(["", *dirs])
    if kind == "write":
        length = len(model.files[target])
        off = rng.randrange(0, length + 1)
        return Op("write", target, off=off, data=rng.randbytes(rng.randrange(1, 256 << 10)))
    if kind == "append":
        return Op("append", target, off=len(model.files[target]),
                  data=rng.randbytes(rng.randrange(1, 128 << 10)))
    if kind == "truncate":
        return Op("truncate", target, off=rng.randrange(0, len(model.files[target]) + 4096))
    if kind == "create":
        return Op("create", model.fresh(parent), data=rng.randbytes(rng.randrange(0, 64 << 10)))
    if kind == "delete":
        return Op("delete", target)
    if kind == "link":
        return Op("link", target, model.fresh(parent))
    if kind == "rename_file":
        return Op("rename_file", target, model.fresh(parent))
    if kind == "mkdir":
        return Op("mkdir", model.fresh(parent))
    movable = [d for d in dirs if d]
    if not movable:
        return Op("mkdir", model.fresh(parent))
    src = rng.choice(movable)
    dest_parent = rng.choice(["", *(d for d in dirs if not _within(d, src))])
    return Op("rename_dir", src, model.fresh(dest_parent))


# -- the lower layer ---------------------------------------------------------------------------


def make_lower(lower: Path, rng: random.Random) -> Model:
    model = Model()

    def put(rel: str, data: bytes) -> None:
        (lower / rel).write_bytes(data)
        model.files[rel] = bytearray(data)

    for d in ("big", "d0", "d0/s", "d1", "d2", "d3", "d3/s", "d3/s/t", "hl"):
        (lower / d).mkdir()
        model.dirs.add(d)
    for i in range(BIG_FILES):
        put(f"big/b{i}", rng.randbytes(BIG_SIZE))
    for d in ("d0", "d0/s", "d1", "d2", "d3", "d3/s", "d3/s/t"):
        for i in range(3):
            put(f"{d}/f{i}", rng.randbytes(rng.randrange(0, 64 << 10)))
    put("hl/a", rng.randbytes(300 << 10))
    os.link(lower / "hl/a", lower / "hl/b")
    model.files["hl/b"] = model.files["hl/a"]
    put("hl/c", rng.randbytes(1 << 20))
    os.link(lower / "hl/c", lower / "d1/lc")
    model.files["d1/lc"] = model.files["hl/c"]
    return model


# -- checking -----------------------------------------------------------------------------


def _sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    """The merged view after the crash: files (path -> sha256), dirs, inode numbers."""

    files: dict[str, str]
    dirs: set[str]
    inos: dict[str, int]


def observe(mnt: Path) -> Seen:
    files, dirs, inos = {}, set(), {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        rel = os.path.relpath(dirpath, mnt)
        rel = "" if rel == "." else rel
        for name in dirnames:
            dirs.add(os.path.join(rel, name))
        for name in filenames:
            path = os.path.join(rel, name)
            st = os.lstat(mnt / path)
            assert stat.S_ISREG(st.st_mode), f"{path}: not a regular file ({st.st_mode:o})"
            files[path] = treesnap.file_digest(str(mnt / path))
            inos[path] = st.st_ino
    return Seen(files, dirs, inos)


def mismatch(model: Model, seen: Seen) -> list[str]:
    out = []
    if seen.dirs != model.dirs:
        out.append(f"dirs: extra {sorted(seen.dirs - model.dirs)}, "
                   f"missing {sorted(model.dirs - seen.dirs)}")
    if set(seen.files) != set(model.files):
        out.append(f"files: extra {sorted(set(seen.files) - set(model.files))}, "
                   f"missing {sorted(set(model.files) - set(seen.files))}")
    shas: dict[int, str] = {}
    for path in sorted(set(seen.files) & set(model.files)):
        content = model.files[path]
        want = shas.setdefault(id(content), _sha(content))
        if seen.files[path] != want:
            out.append(f"content of {path} ({len(content)} bytes in the model) differs")
    for group in model.link_groups():
        inos = {seen.inos.get(p) for p in group if p in seen.inos}
        if len(inos) > 1:
            out.append(f"hard links no longer one file: {group} -> inodes {sorted(inos)}")
    return out


def _prefix_variant(old: bytes, got: bytes, off: int, data: bytes) -> bool:
    """``got`` is ``old`` with a prefix of ``data`` written at ``off`` (a write cut short)."""
    tail = got[off:off + len(data)]
    k = next((i for i, (a, b) in enumerate(zip(tail, data, strict=False)) if a != b),
             min(len(tail), len(data)))
    candidates = {k, max(0, min(len(data), len(got) - off)), 0}
    for n in candidates:
        content = bytearray(old)
        _write_into(content, off, data[:n])
        if bytes(content) == got:
            return True
    return False


def settle(model: Model, op: Op | None, mnt: Path, seen: Seen) -> tuple[Model, str]:
    """The model the merged view matches, given the operation in flight; AssertionError if
    none. Returns it and how the in-flight operation ended."""
    if op is None:
        problems = mismatch(model, seen)
        assert not problems, "after the kill:\n  " + "\n  ".join(problems)
        return model, "none in flight"
    after = model.copy()
    apply(after, op)
    if not mismatch(after, seen):
        return after, "done"
    if not mismatch(model, seen):
        return model, "not done"
    if op.kind in ("write", "append", "create"):
        old = bytes(model.files.get(op.path, b""))
        if op.path in seen.files:
            got = (mnt / op.path).read_bytes()
            if _prefix_variant(old, got, op.off, op.data):
                partial = model.copy()
                if op.kind == "create":
                    partial.files[op.path] = bytearray()
                partial.files[op.path][:] = got
                if not mismatch(partial, seen):
                    return partial, f"partly done ({len(got) - len(old)} bytes)"
    problems = mismatch(model, seen)
    raise AssertionError(f"after the kill with {op} in flight, the merged view is neither "
                         "before nor after it:\n  vs before: " + "\n  ".join(problems)
                         + "\n  vs after: " + "\n  ".join(mismatch(after, seen)))


# -- the workload -------------------------------------------------------------------------


class Workload(threading.Thread):
    """Random operations until the mount dies; ``done`` ops applied to the model."""

    def __init__(self, mnt: Path, model: Model, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.mnt, self.model, self.rng = mnt, model, rng
        self.killed = threading.Event()
        self.inflight: Op | None = None
        self.done = 0
        self.error: BaseException | None = None
        self.history: list[str] = []

    def run(self) -> None:
        try:
            while True:
                op = choose(self.model, self.rng)
                self.inflight = op
                try:
                    perform(self.mnt, op)
                except OSError as e:
                    if self.killed.is_set():
                        return  # the daemon is gone (ENOTCONN, ECONNABORTED)
                    raise AssertionError(f"{op} failed before the kill: {e!r}") from e
                apply(self.model, op)
                self.history.append(str(op))
                self.inflight = None
                self.done += 1
                if self.killed.is_set():
                    return  # answered before the kill: done, counted
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.mark.timeout(size(240, 900))
def test_sigkill_during_writes(tmp_path, figures):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    figures.note(f"seed {seed}")
    lower = fresh_dir(tmp_path, "lower")
    initial = make_lower(lower, rng)
    lower_snap = treesnap.snapshot(lower, times=True)
    kills = ops = kernel_checks = checked = 0
    outcomes: dict[str, int] = {}
    for epoch in range(UPPERS):
        base = fresh_dir(tmp_path, f"epoch{epoch}")
        upper, work, mnt = (fresh_dir(base, n) for n in ("upper", "work", "mnt"))
        options = [f"workdir={work}"]
        model = initial.copy()
        for k in range(KILLS_PER_UPPER):
            with daemon_mounted([lower], upper, mnt, options) as proc:
                figures.daemon(proc.pid)
                load = Workload(mnt, model, rng)
                load.start()
                time.sleep(rng.uniform(*DELAY))
                load.killed.set()
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                load.join(timeout=60)
                assert not load.is_alive(), "an operation hung on the dead mount"
                if load.error:
                    raise load.error
            kills += 1
            ops += load.done + (load.inflight is not None)
            with daemon_mounted([lower], upper, mnt, options) as proc:
                leftovers = os.listdir(work / "pyunion" / "tmp")
                assert not leftovers, f"the workdir kept a crash's leftovers: {leftovers}"
                seen = observe(mnt)
                try:
                    model, outcome = settle(model, load.inflight, mnt, seen)
                except AssertionError as e:
                    raise AssertionError(f"epoch {epoch} kill {k}: {e}\nlast ops:\n  "
                                         + "\n  ".join(load.history[-15:])) from None
                outcomes[outcome.split(" (")[0]] = outcomes.get(outcome.split(" (")[0], 0) + 1
                checked += sum(len(c) for c in {id(c): c for c in model.files.values()}.values())
                ours = treesnap.snapshot(mnt) if k % KERNEL_EVERY == 0 else None
            if ours is not None:
                with kernel_overlay([lower], upper, base) as kmnt:
                    theirs = treesnap.snapshot(kmnt)
                treesnap.assert_same_tree(ours, theirs, "pyunion (first) and kernel overlayfs "
                                          f"over the upper after kill {k} of epoch {epoch}")
                kernel_checks += 1
        treesnap.assert_same_tree(treesnap.snapshot(lower, times=True), lower_snap,
                                  "the lower layer before and after")
    figures["kills"] = kills
    figures["ops"] = ops
    figures["bytes_checked"] = checked
    figures.note(f"{kernel_checks} kernel overlayfs comparisons; in flight at the kill: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    assert kills == UPPERS * KILLS_PER_UPPER
