"""Which ids a rootless container has: its root is the user, and with subordinate ids (as
rootless podman) its other ids 1..65535 are the user's range from /etc/subuid and /etc/subgid.

Layer files stay the user's on disk (their true owners are recorded in the override xattr,
see unionfs/fs/override.py); the container's rootfs mount shows recorded ids as the host ids
the container's user namespace maps them to, so inside they read as the layer says. Several
ids need ``newuidmap``/``newgidmap`` (package uidmap; runc calls them to write the mapping)
and ``user_allow_other`` in /etc/fuse.conf (processes running as subordinate ids are other
users to the FUSE mount). Without them a container maps only its root (one id).
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass

from unionfs.fs.options import FUSE_CONF, user_allow_other
from unionfs.fs.override import IdMapping

MAX_IDS = 65536  # ids 0..65535 inside, as rootless podman maps by default


@dataclass(frozen=True)
class IdMap:
    uid: int
    gid: int
    sub_uids: tuple[int, int] | None = None  # (first host id, count) for ids 1..count
    sub_gids: tuple[int, int] | None = None
    why_single: str = ""  # what is missing for several ids

    @property
    def several(self) -> bool:
        return self.sub_uids is not None and self.sub_gids is not None

    def runtime_mappings(self) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
        """OCI ``uidMappings`` and ``gidMappings``."""
        return (_mappings(self.uid, self.sub_uids if self.several else None),
                _mappings(self.gid, self.sub_gids if self.several else None))

    def mount_options(self) -> list[str]:
        """pyunion mount options for the container's rootfs (ids shown as mapped)."""
        uids, gids = self._ranges()
        options = ["override_stat", f"uidmapping={uids}", f"gidmapping={gids}"]
        return [*options, "allow_other"] if self.several else options

    def container_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The container's ids for host ids (what a file the user owns is inside: root)."""
        uids, gids = self._ranges()
        return IdMapping.parse(uids).stored(uid), IdMapping.parse(gids).stored(gid)

    def _ranges(self) -> tuple[str, str]:
        return (_mount_ranges(self.uid, self.sub_uids if self.several else None),
                _mount_ranges(self.gid, self.sub_gids if self.several else None))

    def describe(self) -> str:
        if not self.several:
            return f"one mapped id (container root = uid {self.uid}; {self.why_single})"
        assert self.sub_uids and self.sub_gids
        return (f"ids 0-{self.sub_uids[1]} mapped (root = uid {self.uid}, 1-{self.sub_uids[1]}"
                f" = subordinate uids {self.sub_uids[0]}-{sum(self.sub_uids) - 1})")


def _mappings(own: int, sub: tuple[int, int] | None) -> list[dict[str, int]]:
    out = [{"containerID": 0, "hostID": own, "size": 1}]
    if sub is not None:
        out.append({"containerID": 1, "hostID": sub[0], "size": sub[1]})
    return out


def _mount_ranges(own: int, sub: tuple[int, int] | None) -> str:
    text = f"0:{own}:1"
    return text + (f":1:{sub[0]}:{sub[1]}" if sub is not None else "")


def rootless_id_map() -> IdMap:
    uid, gid = os.geteuid(), os.getegid()
    missing = [tool for tool in ("newuidmap", "newgidmap") if shutil.which(tool) is None]
    sub_uids = subordinate_range("/etc/subuid", uid)
    sub_gids = subordinate_range("/etc/subgid", uid)
    if sub_uids is None or sub_gids is None:
        why = f"no subordinate ids for uid {uid} in /etc/subuid and /etc/subgid"
    elif missing:
        why = f"{' and '.join(missing)} not found (Debian package uidmap)"
    elif not user_allow_other():
        why = f"'user_allow_other' is not set in {FUSE_CONF}"
    else:
        return IdMap(uid, gid, sub_uids, sub_gids)
    return IdMap(uid, gid, why_single=why)


def subordinate_range(path: str, uid: int) -> tuple[int, int] | None:
    """The user's first range in /etc/subuid or /etc/subgid (``name-or-uid:first:count``),
    at most MAX_IDS - 1 ids long."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        owner, _, rest = line.strip().partition(":")
        first, _, count = rest.partition(":")
        if owner in (name, str(uid)) and first.isdigit() and count.isdigit() and int(count):
            return int(first), min(int(count), MAX_IDS - 1)
    return None
