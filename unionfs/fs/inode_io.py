"""Reads, writes and fsyncs of files the kernel opened without asking (its ``no_open``).

With the pyfuse3 extension (``Operations.enable_no_open``, patches/README.md) pyunion answers
``open`` and ``create`` with ENOSYS, and the kernel stops sending ``open`` and ``release``
for regular files: half the requests of a workload that opens many files. ``read``,
``write`` and ``fsync`` then name the inode instead of a handle, and each opens the backing
file for the length of the request (a system call is far cheaper than a FUSE round trip).

What ``open`` did moves here and to ``setattr``:

- copy-up happens at the first write (or ``setattr``), not when a file is opened for writing;
  nothing is visible through the mount in between (the lower file is unchanged).
- ``O_TRUNC`` reaches pyunion as a ``setattr`` of the size (pyfuse3 leaves ``atomic_o_trunc``
  out of what it asks the kernel for in this mode), and set-id bits that an unprivileged
  write takes away go on the ``setattr`` the kernel sends, from the writer, before such a
  write (``attrs.setattr_``): ``write`` itself names no caller.
- a file whose name went while the kernel knows it is reached through the fd kept for it
  (``Node.kept_fd``), as ``open`` did.
"""

from __future__ import annotations

import os

from unionfs.fs import offload
from unionfs.fs.copyup import copy_up
from unionfs.fs.inodes import Node
from unionfs.fs.state import UnionFS


async def write(fs: UnionFS, node: Node, off: int, buf: bytes, big: int) -> int:
    """Copies ``node`` up on its first write, then writes ``buf`` at ``off``."""
    if node.data_in_lower:
        fs.check_writable()
        async with fs.changing():
            await copy_up(fs, node, with_data=True)
    fd = fs.open_data(node, os.O_WRONLY)
    try:
        if len(buf) >= big:
            return await offload.run_sync(os.pwrite, fd, buf, off)
        return os.pwrite(fd, buf, off)
    finally:
        os.close(fd)


async def fsync(fs: UnionFS, node: Node, datasync: bool) -> None:
    fd = fs.open_data(node, os.O_RDONLY)
    try:
        await offload.run_sync(os.fdatasync if datasync else os.fsync, fd)
    finally:
        os.close(fd)
