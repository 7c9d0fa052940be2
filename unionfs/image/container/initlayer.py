"""A container's init layer: the mount targets the runtime needs that the image lacks.

runc creates a missing mount target (``/proc``, ``/etc/hosts``, a volume's directory...) in the
rootfs, which would put it, and a copied-up parent such as ``/etc``, into the container's upper:
``diff`` would report it and ``commit`` would bake it into the image. As docker does with its
"-init" layer, pyunion makes those targets once, at ``create``, in a layer of the container's
own (``containers/<id>/init``) that sits between the image's layers and the upper. Its
directories take the attributes the image gives them, so the merged view shows no change.
"""

from __future__ import annotations

import os

from unionfs.image.archive.unpack import find_in_stack, find_lower_dir
from unionfs.image.container.records import RunSpec

TARGET_DIRS = ("proc", "dev", "sys")
TARGET_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")
INIT_TARGET = "sbin/docker-init"  # where ``--init`` binds catatonit, as docker binds its init


def _targets(spec: RunSpec) -> list[tuple[str, bool]]:
    """(path relative to /, is a directory) for every mount target of a container."""
    targets = [(d, True) for d in TARGET_DIRS] + [(f, False) for f in TARGET_FILES]
    if spec.init:
        targets.append((INIT_TARGET, False))
    for volume in spec.volumes:
        host, _, rest = volume.partition(":")
        target = rest.split(":")[0].strip("/")
        if target:
            targets.append((target, not os.path.exists(host) or os.path.isdir(host)))
    return targets


def build_init_layer(init: str, image_lowers: list[str], spec: RunSpec) -> None:
    """Creates ``init`` with the targets the image (``image_lowers``, top-most first) lacks."""
    os.makedirs(init, mode=0o755, exist_ok=True)
    _copy_attrs(init, find_lower_dir(image_lowers, ""))
    for path, is_dir in _targets(spec):
        if find_in_stack(image_lowers, path) is not None:
            continue
        parent = os.path.dirname(path)
        if parent and find_lower_dir(image_lowers, parent) is None and \
                find_in_stack(image_lowers, parent) is not None:
            continue  # the parent is not a directory in the image: leave it to the runtime
        _make_parents(init, image_lowers, parent)
        full = os.path.join(init, path)
        if os.path.lexists(full):
            continue
        if is_dir:
            os.mkdir(full, 0o755)
        else:
            with open(full, "w"):
                pass
            os.chmod(full, 0o644)


def _make_parents(init: str, image_lowers: list[str], parent: str) -> None:
    parts = parent.split("/") if parent else []
    for i in range(len(parts)):
        rel = "/".join(parts[:i + 1])
        full = os.path.join(init, rel)
        if os.path.isdir(full):
            continue
        os.mkdir(full, 0o755)
        _copy_attrs(full, find_lower_dir(image_lowers, rel))


def _copy_attrs(target: str, source: str | None) -> None:
    if source is None:
        return
    st = os.lstat(source)
    if os.geteuid() == 0:
        os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, st.st_mode & 0o7777)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def restore_parent_times(init: str, image_lowers: list[str]) -> None:
    """Making entries changed the init layer's directory mtimes; give back the image's."""
    for dirpath, _dirnames, _ in sorted(os.walk(init), key=lambda t: -t[0].count("/")):
        rel = os.path.relpath(dirpath, init)
        source = find_lower_dir(image_lowers, "" if rel == "." else rel)
        if source is not None:
            st = os.lstat(source)
            os.utime(dirpath, ns=(st.st_atime_ns, st.st_mtime_ns))
