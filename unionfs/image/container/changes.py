"""What a container changed, read from its upper (never a walk of the whole rootfs).

``diff`` lists it as docker does (A added, C changed, D deleted); ``commit`` writes it as a
layer. What the runtime needs to mount things on is in the container's init layer, below the
upper, so neither sees it.
"""

from __future__ import annotations

import os
import stat

from unionfs.image.archive.unpack import find_in_stack

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


def read_redirect(path: str) -> str | None:
    for name in REDIRECT_XATTRS:
        try:
            return os.fsdecode(os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue
    return None


def _origin(rel_dir: str, redirect: str) -> str:
    """Where a redirected directory's lower contents are (absolute, or beside it)."""
    if redirect.startswith("/"):
        return redirect.strip("/")
    return f"{rel_dir}/{redirect}" if rel_dir else redirect


def merged_children(lowers: list[str], rel: str) -> set[str]:
    """The names the lower layers show in directory ``rel`` (whiteouts and opaque honoured)."""
    names: set[str] = set()
    for layer in lowers:
        directory = os.path.join(layer, rel) if rel else layer
        if os.path.isdir(directory) and not os.path.islink(directory):
            names |= {n for n in os.listdir(directory) if not n.startswith(".wh.")}
    return {n for n in names if find_in_stack(lowers, f"{rel}/{n}" if rel else n) is not None}


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
            redirect = read_redirect(path) if stat.S_ISDIR(st.st_mode) else None
            if redirect is not None:
                changes.append(("A", "/" + rel))
                _added_tree(path, rel, _origin(rel_dir, redirect), lowers, changes)
                continue
            in_lower = not added_parent and find_in_stack(lowers, rel) is not None
            changes.append(("C" if in_lower else "A", "/" + rel))
            if stat.S_ISDIR(st.st_mode):
                if in_lower and has_xattr(path, OPAQUE_XATTRS, b"y"):
                    changes += _hidden_children(lowers, rel, set(os.listdir(path)))
                stack.append((path, rel, not in_lower))
    changes.sort(key=lambda c: c[1])
    return changes


def _added_tree(upper_path: str | None, rel: str, origin: str | None, lowers: list[str],
                changes: list[tuple[str, str]]) -> None:
    """Everything a renamed directory holds is new at its new place: its upper entries and
    the lower contents of where it came from (``origin``)."""
    upper_names = set(os.listdir(upper_path)) if upper_path and os.path.isdir(upper_path) \
        else set()
    names = upper_names | (merged_children(lowers, origin) if origin is not None else set())
    for name in sorted(names):
        up = os.path.join(upper_path, name) if name in upper_names and upper_path else None
        st = os.lstat(up) if up else None
        if st is not None and is_whiteout(st):
            continue
        changes.append(("A", f"/{rel}/{name}"))
        child_origin = f"{origin}/{name}" if origin is not None else None
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                continue
            redirect = read_redirect(up) if up else None
            if redirect is not None:
                child_origin = _origin(origin or rel, redirect)
            elif has_xattr(up or "", OPAQUE_XATTRS, b"y"):
                child_origin = None
        else:
            below = find_in_stack(lowers, child_origin or "")
            if below is None or not os.path.isdir(below) or os.path.islink(below):
                continue
        _added_tree(up, f"{rel}/{name}", child_origin, lowers, changes)


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
