"""What a container changed, read from its upper (never a walk of the whole rootfs).

``diff`` lists it as docker does (A added, C changed, D deleted); ``commit`` writes it as a
layer. What the runtime needs to mount things on is in the container's init layer, below the
upper, so neither sees it.
"""

from __future__ import annotations

import os
import stat

from unionfs.fs.ondisk import is_whiteout, read_dir_markers, read_redirect
from unionfs.image.archive.unpack import find_in_stack


def is_opaque(path: str) -> bool:
    """An upper directory made opaque (its lower contents are hidden)."""
    return os.path.isdir(path) and read_dir_markers(path, follow_redirects=False).opaque


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
                if in_lower and is_opaque(path):
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
            elif up and is_opaque(up):
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
