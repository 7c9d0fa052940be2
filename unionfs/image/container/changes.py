"""What a container changed, read from its upper (never a walk of the whole rootfs).

``diff`` lists it as docker does (A added, C changed, D deleted); ``commit`` writes it as a
layer. Both leave out what the runtime made only to mount things on (empty ``/proc``, ``/dev``,
``/sys`` directories and the supplied ``/etc`` files) when the image lacks them.
"""

from __future__ import annotations

import os
import stat

from unionfs.image.archive.unpack import find_in_stack
from unionfs.image.container.bundle import SUPPLIED_FILES

MOUNT_POINT_DIRS = ("proc", "dev", "sys")
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def has_xattr(path: str, names: tuple[str, ...], prefix: bytes = b"") -> bool:
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        if value.startswith(prefix):
            return True
    return False


def is_runtime_artifact(rel: str, st: os.stat_result, lowers: list[str], path: str) -> bool:
    """An empty mount target the runtime made, absent from the image."""
    if rel in MOUNT_POINT_DIRS and stat.S_ISDIR(st.st_mode):
        return not os.listdir(path) and find_in_stack(lowers, rel) is None
    if "/" + rel in SUPPLIED_FILES and stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return find_in_stack(lowers, rel) is None
    return False


def upper_changes(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """(kind, /path) for every change the upper holds, sorted by path."""
    changes: list[tuple[str, str]] = []
    stack: list[tuple[str, str, bool]] = [(upper, "", False)]
    while stack:
        directory, rel_dir, added_parent = stack.pop()
        for name in sorted(os.listdir(directory)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if is_whiteout(st):
                changes.append(("D", "/" + rel))
                continue
            if is_runtime_artifact(rel, st, lowers, path):
                continue
            redirected = stat.S_ISDIR(st.st_mode) and has_xattr(path, REDIRECT_XATTRS)
            in_lower = not added_parent and not redirected and \
                find_in_stack(lowers, rel) is not None
            changes.append(("C" if in_lower else "A", "/" + rel))
            if stat.S_ISDIR(st.st_mode):
                if in_lower and has_xattr(path, OPAQUE_XATTRS, b"y"):
                    changes += _hidden_children(lowers, rel, set(os.listdir(path)))
                stack.append((path, rel, not in_lower))
    changes.sort(key=lambda c: c[1])
    return changes


def _hidden_children(lowers: list[str], rel: str, kept: set[str]) -> list[tuple[str, str]]:
    """Lower children of an opaque directory that the upper does not have again: deleted."""
    below = find_in_stack(lowers, rel)
    if below is None or not os.path.isdir(below):
        return []
    names: set[str] = set()
    for layer in lowers:
        candidate = os.path.join(layer, rel)
        if os.path.isdir(candidate) and not os.path.islink(candidate):
            names |= {n for n in os.listdir(candidate) if not n.startswith(".wh.")}
    return [("D", f"/{rel}/{n}") for n in sorted(names - kept)
            if find_in_stack(lowers, f"{rel}/{n}") is not None]
