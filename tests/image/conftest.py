"""Fixtures and helpers for the image-manager tests.

* ``images`` (session): the ``ImageSet`` of real images (umoci/skopeo), built once.
* ``store``: a fresh, empty store directory per test.
* ``run_pyunion(store, *args, input=None, check=True, env=None)``: one ``pyunion --root STORE``
  command, output through files (a daemon keeping our stdout cannot hang the test).
* ``store_state`` / ``assert_store_unchanged``: everything in a store except the sqlite
  WAL/shm/journal files and lock files; the database compared by its logical dump.
* ``mounted_image``: ``pyunion mount-image`` for a block, always unmounted afterwards.
* ``rootfs_tree``: a ``treesnap`` snapshot (with mtimes) without overlay-private xattrs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xattr

from tests import mounts, treesnap
from tests.cli_helpers import run_through_files
from tests.image.imagebuild import ImageSet
from tests.treesnap import file_digest

PYUNION = [sys.executable, "-m", "unionfs.image.cli"]
RUN_TIMEOUT = 90.0
REPO_ROOT = Path(__file__).resolve().parents[2]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ERROR_PREFIX = "pyunion: error: "


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> ImageSet:
    return ImageSet(tmp_path_factory.mktemp("images"))


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def mnt(tmp_path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- running pyunion


def pyunion_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without PYUNION_* settings, plus ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("PYUNION_")}
    out.update(env or {})
    return out


def pyunion_command(store: os.PathLike | str, *args: Any) -> list[str]:
    return [*PYUNION, "--root", str(store), *(str(a) for a in args)]


def run_pyunion(store: os.PathLike | str, *args: Any, input: str | bytes | None = None,
                check: bool = True, env: dict[str, str] | None = None,
                timeout: float = RUN_TIMEOUT, stdin: Any = None,
                binary_stdout: bool = False) -> subprocess.CompletedProcess:
    """Run ``pyunion --root STORE ARGS``; returns a CompletedProcess with text output.

    ``input`` (text or bytes) or ``stdin`` (an open file) feed standard input, which is
    /dev/null otherwise. With ``binary_stdout`` the stdout is kept as bytes. ``check`` asserts
    exit status 0 and shows stderr if not.
    """
    cmd = pyunion_command(store, *args)
    status, stdout, stderr = run_through_files(cmd, timeout=timeout, input=input, stdin=stdin,
                                               env=pyunion_env(env), cwd=REPO_ROOT)
    result = subprocess.CompletedProcess(
        cmd, status, stdout if binary_stdout else stdout.decode(errors="replace"),
        stderr.decode(errors="replace"))
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd[2:])} exited {result.returncode}:\n{result.stderr.strip()}")
    return result


def start_pyunion(store: os.PathLike | str, *args: Any, out_dir: Path,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``pyunion`` in the background (its own session; output to files in out_dir)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "stdout", "wb") as out, open(out_dir / "stderr", "wb") as err:
        return subprocess.Popen(pyunion_command(store, *args), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=pyunion_env(env), cwd=REPO_ROOT,
                                start_new_session=True)


def expect_error(result: subprocess.CompletedProcess, cause: str) -> str:
    """Exit status 1 and one stderr line ``pyunion: error: ...`` matching ``cause``.

    The error line is the last line of stderr and the only one with that prefix (progress
    lines before it are tolerated, a traceback is not). ``cause`` is a case-insensitive
    regular expression the message must contain.
    """
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (
        f"expected exit 1, got {result.returncode}; stderr:\n{result.stderr.strip()}")
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], (
        f"expected one final '{ERROR_PREFIX}...' line, got:\n{result.stderr.strip()}")
    assert "Traceback" not in result.stderr
    message = errors[0][len(ERROR_PREFIX):]
    assert re.search(cause, message, re.IGNORECASE), (
        f"error message does not mention /{cause}/: {message!r}")
    return message


def load(store: Path, source: os.PathLike | str, *opts: str, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    return run_pyunion(store, "load", "-i", source, *opts, env=env, check=check)


def inspect(store: Path, *refs: str) -> list[dict[str, Any]]:
    data = json.loads(run_pyunion(store, "inspect", *refs).stdout)
    assert isinstance(data, list) and len(data) == len(refs), data
    return data


def inspect_one(store: Path, ref: str) -> dict[str, Any]:
    return inspect(store, ref)[0]


def image_ids(store: Path, *opts: str) -> list[str]:
    """``images -q`` (plus ``opts``), one id per line."""
    return run_pyunion(store, "images", "-q", *opts).stdout.split()


def images_json(store: Path, *args: str) -> list[dict[str, Any]]:
    out = run_pyunion(store, "images", "--format", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def parse_table(text: str) -> list[dict[str, str]]:
    """A docker-style space-aligned table (header line first) as a list of row dicts.

    Column boundaries come from where each header word starts in the header line.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no table printed"
    header = lines[0]
    names = re.findall(r"\S+(?: \S+)*", header)  # "IMAGE ID" and "CREATED BY" stay whole
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        row = {}
        for i, name in enumerate(names):
            end = starts[i + 1] if i + 1 < len(names) else None
            row[name] = line[starts[i]:end].strip()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- store snapshots


def _all_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = xattr.listxattr(path, symlink=True)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = xattr.getxattr(path, name, symlink=True)
        except OSError as e:
            out[name] = f"<errno {e.errno}>".encode()
    return out



def _ignored(rel: str) -> bool:
    parts = rel.split(os.sep)
    return (parts[0] == "locks" or rel.endswith((".lock", "-wal", "-shm", "-journal"))
            or parts[-1].startswith("db.sqlite-"))


def db_dump(db: Path) -> list[str]:
    """The logical content of the store database (schema and rows), or [] if there is none."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def store_state(store: Path) -> dict[str, Any]:
    """Every path in the store with its type, mode, owner, content digest, target, xattrs.

    Ignored: lock files (``locks/``, ``*.lock``) and sqlite's WAL/shm/journal files; the
    database itself is recorded by its logical dump (its bytes change on checkpoints).
    """
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(store):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, store)
            if _ignored(rel):
                continue
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            detail: Any = None
            if stat.S_ISREG(st.st_mode) and rel != "db.sqlite":
                detail = (st.st_size, file_digest(full))
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail,
                            tuple(sorted(_all_xattrs(full).items())))
    return {"entries": entries, "db": db_dump(store / "db.sqlite")}


def assert_store_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    a, b = before["entries"], after["entries"]
    diffs = [f"new: {p}" for p in sorted(set(b) - set(a))]
    diffs += [f"gone: {p}" for p in sorted(set(a) - set(b))]
    diffs += [f"changed: {p}: {a[p]} -> {b[p]}" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    if before["db"] != after["db"]:
        old, new = set(before["db"]), set(after["db"])
        diffs += [f"db row gone: {r[:160]}" for r in sorted(old - new)[:10]]
        diffs += [f"db row new: {r[:160]}" for r in sorted(new - old)[:10]]
    assert not diffs, "the store changed:\n  " + "\n  ".join(diffs[:40])


def layer_dirs_on_disk(store: Path) -> set[str]:
    """Names of the entries in ``STORE/layers`` (one per unpacked layer)."""
    layers = store / "layers"
    return set(os.listdir(layers)) if layers.exists() else set()


def used_layer_dirs(store: Path, *refs: str) -> set[str]:
    """Names of the layer dirs (``inspect`` LayerDirs) of ``refs``, or of every image.

    Tests compare ``layers/`` with this rather than with DiffIDs, so that how the dirs are
    named is checked in one place only (test_layer_dirs_are_named_by_diff_id).
    """
    if not refs:
        refs = tuple(image_ids(store, "-a", "--no-trunc"))
    if not refs:
        return set()
    return {Path(d).name for info in inspect(store, *refs) for d in info["LayerDirs"]}


def tmp_leftovers(store: Path) -> list[str]:
    tmp = store / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


# --------------------------------------------------------------------------- mounts and trees


def unmount_image(store: Path, mnt: Path) -> None:
    """``pyunion umount-image``; then ``fusermount3 -u``; then umount (lazy as a last resort)."""
    if mounts.is_mounted(mnt):
        run_pyunion(store, "umount-image", mnt, check=False, timeout=30)
    if mounts.is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
    if mounts.is_mounted(mnt):
        mounts.unmount(mnt)


@contextlib.contextmanager
def mounted_image(store: Path, image: str, mnt: Path) -> Iterator[Path]:
    """``pyunion mount-image IMAGE MNT`` for the block; always unmounted afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        result = run_pyunion(store, "mount-image", image, mnt, check=False)
        assert result.returncode == 0, f"mount-image {image} failed: {result.stderr.strip()}"
        assert mounts.is_mounted(mnt), f"mount-image {image} returned but {mnt} is not mounted"
        yield mnt
    finally:
        unmount_image(store, mnt)


def rootfs_tree(root: os.PathLike | str) -> dict[str, Any]:
    """What a user sees below ``root`` (with mtimes), without user.overlay.* xattrs."""
    snap = treesnap.snapshot(root, times=True)
    for entry in snap["entries"].values():
        entry["xattrs"] = {k: v for k, v in entry["xattrs"].items()
                           if not k.startswith("user.overlay.")}
    return snap


def assert_same_rootfs(got: os.PathLike | str, want: os.PathLike | str, what: str) -> None:
    treesnap.assert_same_tree(rootfs_tree(got), rootfs_tree(want), what)
