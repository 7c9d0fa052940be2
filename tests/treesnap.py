"""Snapshots of everything a user can see in a tree, for differential comparisons.

``snapshot(root)`` walks a (mounted) tree without following symlinks and records, per path:
type, mode, owner, size, content digest, link target, device numbers, user xattrs and (with
``times=True``) the nanosecond mtime. Hard links are recorded as groups of paths that share one
inode, so two implementations that number inodes differently still compare equal.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

import xattr

Entry = dict[str, Any]


def _user_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = xattr.listxattr(path, symlink=True)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith("user."):
            try:
                out[name] = xattr.getxattr(path, name, symlink=True)
            except OSError as e:
                out[name] = f"<error {e.errno}>".encode()
    return out


def file_digest(path: str) -> str:
    """The sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(path: str, st: os.stat_result, *, times: bool) -> Entry:
    """What a user sees of one object (not its inode number)."""
    entry: Entry = {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "xattrs": _user_xattrs(path),
    }
    if stat.S_ISREG(st.st_mode):
        entry["size"] = st.st_size
        entry["sha256"] = file_digest(path)
        entry["nlink"] = st.st_nlink
    elif stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if times and not stat.S_ISLNK(st.st_mode):
        entry["mtime_ns"] = st.st_mtime_ns
    return entry


def snapshot(root: os.PathLike | str, *, times: bool = False) -> dict[str, Any]:
    """Everything visible below ``root``: {"entries": {relpath: Entry}, "links": [[paths]]}."""
    root = os.fspath(root)
    entries: dict[str, Entry] = {}
    by_inode: dict[tuple[int, int], list[str]] = defaultdict(list)
    pending = [""]
    while pending:
        rel = pending.pop()
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            child_rel = os.path.join(rel, name) if rel else name
            child = os.path.join(full, name)
            st = os.lstat(child)
            entries[child_rel] = describe(child, st, times=times)
            if stat.S_ISDIR(st.st_mode):
                pending.append(child_rel)
            else:
                by_inode[(st.st_dev, st.st_ino)].append(child_rel)
    links = sorted(sorted(group) for group in by_inode.values() if len(group) > 1)
    return {"entries": entries, "links": links}


def differences(a: dict[str, Any], b: dict[str, Any], limit: int = 20) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    ea, eb = a["entries"], b["entries"]
    for path in sorted(set(ea) | set(eb)):
        if path not in ea:
            out.append(f"only in second: {path} {eb[path]}")
        elif path not in eb:
            out.append(f"only in first: {path} {ea[path]}")
        elif ea[path] != eb[path]:
            keys = sorted(k for k in set(ea[path]) | set(eb[path])
                          if ea[path].get(k) != eb[path].get(k))
            detail = ", ".join(f"{k}: {ea[path].get(k)!r} != {eb[path].get(k)!r}" for k in keys)
            out.append(f"differs: {path}: {detail}")
    if a["links"] != b["links"]:
        out.append(f"hard-link groups differ: {a['links']} != {b['links']}")
    return out[:limit]


def assert_same_tree(a: dict[str, Any], b: dict[str, Any], what: str = "trees") -> None:
    diff = differences(a, b)
    assert not diff, f"{what} differ:\n  " + "\n  ".join(diff)


def tree_of(root: os.PathLike | str, *, times: bool = False) -> dict[str, Any]:
    """Shorthand used by tests: ``snapshot`` of a Path."""
    return snapshot(Path(root), times=times)
