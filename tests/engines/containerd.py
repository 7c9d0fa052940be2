"""A private containerd (Debian's 1.6) with the pyunion snapshotter as a proxy plugin.

Everything lives below one short temporary directory (unix socket paths are limited to 108
bytes): containerd's ``config.toml`` (root, state and socket there, the CRI plugin disabled,
``[proxy_plugins.pyunion]`` pointing at the snapshotter's socket), the pyunion store the
snapshotter serves, and the logs (both daemons with the venv's ``bin`` first on PATH).
``close`` stops both (SIGTERM, then SIGKILL, by pid), unmounts what is still mounted below the
directory and deletes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.cli_helpers import mounts_below, undo_mounts

VENV_BIN = str(Path(sys.executable).parent)
PYUNION = [sys.executable, "-m", "unionfs.image.cli"]
NAMESPACE = "pyunion-tests"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _wait_for_socket(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until something accepts connections on ``path`` (a killed daemon's socket file stays)."""
    deadline = time.monotonic() + timeout
    while not _answers(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{proc.args[0]} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


class Containerd:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
        self.store = self.base / "store"
        self.address = self.base / "containerd.sock"
        self.snapshotter_address = self.base / "snapshotter.sock"
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin')}"}
        (self.base / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.base}/root"\nstate = "{self.base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.base}/containerd.ttrpc.sock"\n'
            "[proxy_plugins.pyunion]\n"
            f'  type = "snapshot"\n  address = "{self.snapshotter_address}"\n')
        self.snapshotter: subprocess.Popen | None = None
        self.containerd: subprocess.Popen | None = None

    def _start(self, cmd: list[str], log: Path, address: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=self.env, start_new_session=True)
        _wait_for_socket(address, proc, log)
        return proc

    def start_snapshotter(self, wrapper: tuple[str, ...] = (), options: tuple[str, ...] = ()
                          ) -> None:
        """``wrapper``: a command line the snapshotter runs under (strace, say)."""
        self.snapshotter = self._start(
            [*wrapper, *PYUNION, "--root", str(self.store), "snapshotter",
             "--address", str(self.snapshotter_address), "--debug", *options],
            self.base / "snapshotter.log", self.snapshotter_address)

    def start_containerd(self) -> None:
        self.containerd = self._start(
            ["containerd", "--config", str(self.base / "config.toml")],
            self.base / "containerd.log", self.address)

    def start(self) -> Containerd:
        self.start_snapshotter()
        self.start_containerd()
        return self

    def stop_snapshotter(self, sig: int = signal.SIGTERM) -> None:
        assert self.snapshotter is not None
        self.snapshotter.send_signal(sig)
        self.snapshotter.wait(timeout=15)

    def stop_containerd(self) -> None:
        _stop(self.containerd)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", str(self.address), "--namespace", NAMESPACE]
        result = subprocess.run([*cmd, *args], env={**self.env, **(env or {})}, text=True,
                                capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def snapshot_dirs(self) -> list[str]:
        directory = self.store / "snapshots"
        return sorted(os.listdir(directory)) if directory.exists() else []

    def mounts(self) -> list[str]:
        return sorted(mounts_below([self.base]))

    def close(self) -> list[str]:
        """Stops both daemons; returns what was still mounted below the directory."""
        if self.containerd is not None and self.containerd.poll() is None:
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "KILL", task, check=False)
                self.ctr("tasks", "rm", "-f", task, check=False)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "rm", container, check=False)
        _stop(self.containerd)
        _stop(self.snapshotter)
        left = mounts_below([self.base])
        undo_mounts(left)
        shutil.rmtree(self.base, ignore_errors=True)
        return sorted(left)
