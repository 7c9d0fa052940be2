"""Running a mount: pyfuse3 session, trio loop, signals, readiness and background mode.

``mount(config)`` validates, then either serves in the foreground or forks a daemon and
returns only once the filesystem is mounted (or with the daemon's one-line error). The upper
directory is locked (``flock``) for as long as the daemon runs, so two mounts never share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
import shutil
import signal
import sys
import time

import pyfuse3
import trio

from unionfs.fs import lazy
from unionfs.fs.copyup import finish_interrupted_copy_ups
from unionfs.fs.operations import UnionOperations
from unionfs.fs.options import MountConfig, MountError, validate
from unionfs.fs.state import UnionFS

log = logging.getLogger("pyunion")


# The kernel takes one page of mount options; libfuse adds fd=, rootmode=, user_id=, group_id=.
MOUNT_OPTIONS_LIMIT = 4096 - 128


def check_options_fit(options: set[str]) -> None:
    """A clear message where the kernel would refuse the mount for its option string's size."""
    total = sum(len(o.encode()) + 1 for o in options)
    if total > MOUNT_OPTIONS_LIMIT:
        longest = max(options, key=len)
        raise MountError(f"the mount options are {total} bytes, more than the kernel's one page "
                         f"allows; the longest is {longest.split('=')[0]} ({len(longest)} bytes): "
                         "give a shorter one (e.g. -o fsname=NAME)")


def fuse_options(config: MountConfig) -> set[str]:
    fsname = config.source.replace("\\", "\\\\").replace(",", "\\,")
    options = {f"fsname={fsname}", "subtype=pyunion", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    if os.geteuid() != 0:
        # An ordinary user mounts through the setuid fusermount3; with auto_unmount it stays
        # beside the daemon and unmounts should the daemon die.
        options.add("auto_unmount")
    if config.readonly or config.upper is None:
        options.add("ro")
    flags = set(config.fuse_flags)
    if os.geteuid() == 0:  # as an overlayfs mount: set-id programs and devices work
        flags |= {f for f in ("suid", "dev") if "no" + f not in flags}
    if "atime" not in flags:
        # As fuse-overlayfs: a read then needs no attribute refresh (lower atimes never change).
        flags.add("noatime")
    options |= flags
    if config.debug:
        options.add("debug")
    return options


# How long a mount waits for the exiting daemon of the previous mount of its upper.
PREVIOUS_DAEMON_WAIT = 5.0


def lock_layers(config: MountConfig) -> None:
    """Locks the upper and the workdir for this process and its daemon child.

    MountError if another mount holds either. The locks live on fds deliberately left open
    (and inherited by the daemon): they are released only when the serving process exits,
    which is shortly after its unmount, not at it. So a lock held is waited for a while
    (``PREVIOUS_DAEMON_WAIT``) before the mount is refused: containerd, for one, unmounts a
    rootfs and mounts it again at once (``ctr run`` reads the image's /etc/passwd through a
    mount of its own before the shim mounts it).
    """
    if config.upper is None or config.readonly:
        return
    _lock_dir(config.upper, "upper directory")
    if config.workdir and os.path.isdir(config.workdir):
        _lock_dir(config.workdir, "workdir")


def _lock_dir(path: str, what: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + PREVIOUS_DAEMON_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise MountError(f"{what} {path} is in use by another mount") from None
            time.sleep(0.02)


def start(config: MountConfig) -> UnionFS:
    """Creates the workdir and mounts; on failure removes what it created."""
    created_workdir = bool(config.workdir) and not os.path.exists(config.workdir or "")
    try:
        if created_workdir:
            assert config.workdir
            os.mkdir(config.workdir, 0o700)
        options = fuse_options(config)
        check_options_fit(options)
        fs = UnionFS(config)
        fs.prepare_workdir()
        os.umask(0)
        if fs.index_dir and os.listdir(fs.index_dir):  # (a crash left copy-ups to finish)
            trio.run(finish_interrupted_copy_ups, fs)
        pyfuse3.init(UnionOperations(fs), config.mountpoint, options)
        fs.kernel_attached = True
        return fs
    except BaseException as e:
        if created_workdir and config.workdir:
            shutil.rmtree(config.workdir, ignore_errors=True)
        if isinstance(e, RuntimeError):
            raise MountError(f"mounting {config.mountpoint} failed: {e}") from None
        if isinstance(e, OSError):
            raise MountError(f"mounting {config.mountpoint} failed: {e.strerror}") from None
        raise


async def _serve(fs: UnionFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(lazy.complete_in_background, fs)  # (nothing without lazy layers)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def hold_stop_signals() -> None:
    """Keeps SIGTERM/SIGINT/SIGHUP pending until the loop can handle them: a stop request
    that arrives right after the mount is ready must unmount cleanly, not kill the daemon."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        async for _ in signals:
            pyfuse3.terminate()
            return


def serve(fs: UnionFS) -> None:
    """Runs the request loop until unmounted or signalled, then unmounts."""
    unmounted = False
    try:
        trio.run(_serve, fs)
    finally:
        try:
            pyfuse3.close(unmount=True)
            unmounted = True
        finally:
            if fs.config.stats_file:
                _write_stats(fs)
    if not unmounted:
        log.error("unmount of %s failed", fs.config.mountpoint)


def _write_stats(fs: UnionFS) -> None:
    assert fs.config.stats_file
    with open(fs.config.stats_file, "w") as f:
        json.dump(dict(sorted(fs.stats.items())), f, indent=1)


def setup_logging(config: MountConfig, *, background: bool) -> None:
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if background and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("pyunion[%(process)d]: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def mount(config: MountConfig, ready_fd: int | None = None) -> int:
    """Validates and mounts; returns the exit status for ``mount.pyunion``.

    In the foreground, ``ready_fd`` (if given) receives ``ok`` once the filesystem is mounted,
    or the error line if it could not be; this is how ``unionfs.mount()`` waits for readiness.
    """
    if ready_fd is not None:
        # not for our children: fusermount3 (auto_unmount) outlives the mount and would keep
        # the waiting end from ever seeing the pipe close
        os.set_inheritable(ready_fd, False)
    try:
        config = validate(config)
        lock_layers(config)
        if config.foreground:
            setup_logging(config, background=False)
            fs = start(config)
    except MountError as e:
        if ready_fd is not None:
            _report(ready_fd, str(e))
        raise
    if not config.foreground:
        return _mount_in_background(config)
    hold_stop_signals()
    if ready_fd is not None:
        _report(ready_fd, "ok")
    serve(fs)
    return 0


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


def _mount_in_background(config: MountConfig) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        _daemon_child(config, write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    if answer == "ok":
        return 0
    if not answer:
        os.waitpid(pid, 0)
        answer = "the daemon died before the filesystem was mounted"
    raise MountError(answer.strip())


def _daemon_child(config: MountConfig, ready_fd: int) -> None:
    """Detaches, mounts, reports readiness (or the error) through ``ready_fd``, serves."""
    try:
        os.setsid()
        if os.fork() != 0:  # the session leader exits; the daemon can't get a terminal back
            os._exit(0)
        _detach_stdio()
        setup_logging(config, background=True)
        fs = start(config)
    except MountError as e:
        os.write(ready_fd, str(e).encode())
        os._exit(1)
    except BaseException as e:  # noqa: BLE001 - anything must reach the waiting parent
        os.write(ready_fd, f"internal error: {e!r}".encode())
        os._exit(1)
    hold_stop_signals()
    os.write(ready_fd, b"ok")
    os.close(ready_fd)
    with contextlib.suppress(Exception):
        serve(fs)
    os._exit(0)


def _detach_stdio() -> None:
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
