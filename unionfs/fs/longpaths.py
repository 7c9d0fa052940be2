"""Backing paths of any length: a layer path too long for one system call is reached through
a directory file descriptor.

The kernel lets a merged path grow to 4,095 bytes (and deeper still, one name at a time,
after renames), but a path handed to a system call must stay below ``PATH_MAX`` (4,096 bytes),
and a backing path is the layer root's path plus the merged path. So a long backing path is
split: its leading directories are opened (``O_PATH``, from the layer root's descriptor, a
part of at most ``CHUNK`` bytes at a time) and the path given to the system call is
``/proc/self/fd/<fd>/<rest>``, which the kernel resolves from that directory. Everything that
takes a path (``lstat``, ``rename``, xattrs, ``scandir`` ...) then works unchanged.

The descriptors live as long as the FUSE request that made them (:func:`begin_request` /
:func:`end_request` around a handler that may wait; ``INLINE`` around one that never waits,
which runs start to end in the request loop's thread): a path is used only while its request
runs. Short paths, nearly all of them, are plain strings.
"""

from __future__ import annotations

import os
from contextvars import ContextVar, Token

# A backing path this long or longer is reached through a directory fd. It leaves room for
# a name (255 bytes) that callers may join to it.
DIRECT_LIMIT = 3500
# The part of the path after the opened directory; also leaves room for a joined name.
TAIL_LIMIT = 2048
# How much of the path one openat(2) resolves at most (well below PATH_MAX).
CHUNK = 3072
_PROC_FD = "/proc/self/fd"

_request_fds: ContextVar[list[int] | None] = ContextVar("pyunion_request_fds", default=None)


RequestScope = tuple[Token, list[int]]


class InlineRequest:
    """The request being answered inline (by a handler that never waits), if any: it sets
    ``active`` and, at its end, closes ``fds`` if there are any. Two attribute stores per
    request instead of a context variable's set and reset (every request pays for them)."""

    __slots__ = ("active", "fds")

    def __init__(self) -> None:
        self.active = False
        self.fds: list[int] = []

    def close_fds(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


INLINE = InlineRequest()


def begin_request() -> RequestScope:
    """Starts collecting the directory fds a request opens for long paths. A pair of plain
    calls rather than a context manager: every request pays for it (a generator-based one
    cost four times as much)."""
    fds: list[int] = []
    return _request_fds.set(fds), fds


def end_request(scope: RequestScope) -> None:
    """Closes the fds the request opened."""
    token, fds = scope
    _request_fds.reset(token)
    for fd in fds:
        os.close(fd)


def open_root(root: str) -> int:
    """A descriptor of a layer root, kept for the life of the mount."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def backing_path(root: str, root_fd: int, rel: str) -> str:
    """A path for ``rel`` under the layer ``root`` (open as ``root_fd``) that a system call
    accepts, however long ``root/rel`` is."""
    full = f"{root}/{rel}" if rel else root
    # Cheap test first: a str of n characters encodes to at most 4n bytes.
    if len(full) * 4 < DIRECT_LIMIT:
        return full
    if len(os.fsencode(full)) < DIRECT_LIMIT:
        return full
    fds = _request_fds.get()
    if fds is None and INLINE.active and _in_request_loop():
        fds = INLINE.fds
    if fds is None:  # outside a request (mount set-up): the path is used as it is
        return full
    dir_fd, tail = _open_leading_dirs(root_fd, os.fsencode(rel), fds)
    return os.fsdecode(f"{_PROC_FD}/{dir_fd}/".encode() + tail)


def _in_request_loop() -> bool:
    """Runs in the thread of trio's loop (where inline requests are answered), not in a
    worker thread that may run meanwhile."""
    import trio  # (only here, for a long path: the image tools import this module too)

    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _open_leading_dirs(root_fd: int, rel: bytes, fds: list[int]) -> tuple[int, bytes]:
    """Opens directories along ``rel`` until at most ``TAIL_LIMIT`` bytes of it are left;
    returns the last directory's fd and the rest. Opened fds are added to ``fds``."""
    dir_fd = root_fd
    while len(rel) > TAIL_LIMIT:
        # Cut at a "/" no further than CHUNK bytes in, as far in as that allows.
        cut = rel.rfind(b"/", 0, min(CHUNK, len(rel) - 1) + 1)
        if cut <= 0:
            break  # (names are at most 255 bytes: never happens)
        dir_fd = os.open(rel[:cut], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        fds.append(dir_fd)
        rel = rel[cut + 1:]
    return dir_fd, rel
