"""The library API: throw-away copy-on-write trees for tests and tools.

    from unionfs import mount

    with mount(["/srv/fixtures/app", "/srv/fixtures/base"]) as tree:  # a temporary upper
        (tree / "etc/app.conf").write_text("debug = true\\n")

The daemon is ``mount.pyunion`` itself, run in the foreground as a child process, so the
library mounts through exactly the command line's code path and knows the pid it must stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO

from unionfs.fs.options import MountError
from unionfs.prestart import (
    daemon_stderr_file,
    interrupts_held,
    prestart_daemon,
    take_warm_daemon,
)

__all__ = ["Mount", "MountError", "mount", "mount_async", "prestart_daemon"]


EXIT_TIMEOUT = 20.0


class Mount:
    """One pyunion mount. ``start()`` mounts, ``unmount()`` undoes it and removes temp dirs.

    ``upper=None`` makes a temporary upper (and workdir) that ``unmount()`` removes;
    ``mountpoint=None`` a temporary mountpoint.
    """

    def __init__(self, lowers: Sequence[os.PathLike | str], upper: os.PathLike | str | None = None,
                 mountpoint: os.PathLike | str | None = None, *,
                 workdir: os.PathLike | str | None = None, readonly: bool = False,
                 options: Sequence[str] = ()) -> None:
        if isinstance(lowers, (str, os.PathLike)):
            lowers = [lowers]
        self.lowers = [Path(p) for p in lowers]
        self._temp_root: Path | None = None
        self.upper = Path(upper) if upper is not None else None
        self.workdir = Path(workdir) if workdir is not None else None
        self.path = Path(mountpoint) if mountpoint is not None else None
        self.readonly = readonly
        self.options = list(options)
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def mounted(self) -> bool:
        return self._proc is not None

    def _prepare_dirs(self, temporary_upper: bool) -> None:
        if temporary_upper or self.path is None:
            self._temp_root = Path(tempfile.mkdtemp(prefix="pyunion-"))
        if temporary_upper:
            assert self._temp_root is not None
            self.upper = self._temp_root / "upper"
            self.workdir = self._temp_root / "work"
            self.upper.mkdir()
            self.workdir.mkdir()
        if self.path is None:
            assert self._temp_root is not None
            self.path = self._temp_root / "mnt"
            self.path.mkdir()

    def command(self, ready_fd: int) -> list[str]:
        assert self.path is not None
        cmd = [sys.executable, "-m", "mount_helper", ":".join(str(p) for p in self.lowers)]
        if self.upper is not None:
            cmd.append(str(self.upper))
        cmd += [str(self.path), "-f", f"--ready-fd={ready_fd}"]
        options = list(self.options)
        if self.workdir is not None:
            options.append("workdir=" + str(self.workdir).replace(",", "\\,"))
        if self.readonly:
            options.append("ro")
        if options:
            cmd += ["-o", ",".join(options)]
        return cmd

    def start(self) -> Path:
        """Mounts and returns the mountpoint once the filesystem answers; MountError if not."""
        if self._proc is not None:
            raise MountError(f"{self.path} is already mounted by this object")
        self._prepare_dirs(temporary_upper=self.upper is None and not self.readonly)
        proc: subprocess.Popen | None = None
        try:
            with interrupts_held():  # a Ctrl-C now is raised once we know the pid
                proc, read_end = self._start_daemon()
                pipe = open(read_end, "rb")  # noqa: SIM115 (closed just below)
            with pipe:
                answer = pipe.read().decode(errors="replace")
        except BaseException:  # interrupted (SIGINT) or failed: undo what is there
            if proc is not None:
                _unmount(str(self.path), proc)
            self._cleanup()
            raise
        assert proc is not None
        if answer != "ok":
            proc.wait(timeout=EXIT_TIMEOUT)
            message = answer or self._daemon_stderr().removeprefix("mount.pyunion: ")
            self._cleanup()
            raise MountError(message or f"mount.pyunion exited with {proc.returncode}")
        self._proc = proc
        assert self.path is not None
        return self.path

    def _start_daemon(self) -> tuple[subprocess.Popen, int]:
        """The daemon, told what to mount, and the pipe on which it will say ``ok`` (or why
        not). A daemon started ahead (``prestart_daemon``) is used if there is one. Called
        with interrupts held, so that the caller always learns the daemon's pid."""
        warm = take_warm_daemon()
        if warm is not None:
            if warm.hand_over(self.command(warm.child_ready_fd)[3:]):
                self._stderr = warm.stderr
                return warm.proc, warm.ready_fd
            warm.discard()
        self._stderr = daemon_stderr_file()
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                self.command(write_end), pass_fds=[write_end], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return proc, read_end

    def _daemon_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def _cleanup(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._remove_temp()

    def unmount(self) -> None:
        """Unmounts (lazily as a last resort), stops the daemon, removes temporary dirs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _unmount(str(self.path), proc)
        finally:
            self._cleanup()

    def _remove_temp(self) -> None:
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
            self._temp_root = None

    def __enter__(self) -> Path:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.unmount()


def _unmount(mountpoint: str, proc: subprocess.Popen) -> None:
    """Asks the daemon to unmount (SIGTERM), then ``umount``, then lazy, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    elif proc.returncode < 0:  # it died by a signal: its mount is dead, take it away now
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=30)
    try:
        proc.wait(timeout=EXIT_TIMEOUT / 2)
    except subprocess.TimeoutExpired:
        for args in (["umount", mountpoint], ["umount", "-l", mountpoint]):
            subprocess.run(args, capture_output=True, timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EXIT_TIMEOUT / 2)
                break
        else:
            proc.kill()
            proc.wait()
    _wait_unmounted(mountpoint)


def _wait_unmounted(mountpoint: str) -> None:
    """The kernel drops the mount just after the daemon exits; a dead mount is unmounted."""
    for _ in range(100):
        if not _is_mounted(mountpoint):
            return
        time.sleep(0.02)
    subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=30)


def _is_mounted(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@contextlib.contextmanager
def mount(lowers: Sequence[os.PathLike | str], upper: os.PathLike | str | None = None, *,
          mountpoint: os.PathLike | str | None = None, workdir: os.PathLike | str | None = None,
          readonly: bool = False, options: Sequence[str] = ()) -> Iterator[Path]:
    """Mounts a union for the duration of the block and yields its mountpoint (a Path)."""
    m = Mount(lowers, upper, mountpoint, workdir=workdir, readonly=readonly, options=options)
    path = m.start()
    try:
        yield path
    finally:
        m.unmount()


@contextlib.asynccontextmanager
async def mount_async(lowers: Sequence[os.PathLike | str], upper: os.PathLike | str | None = None,
                      **kwargs) -> AsyncIterator[Path]:
    """``mount()`` for trio code: mounting and unmounting run in a worker thread."""
    import trio

    m = Mount(lowers, upper, **kwargs)
    path = await trio.to_thread.run_sync(m.start)
    try:
        yield path
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(m.unmount)
