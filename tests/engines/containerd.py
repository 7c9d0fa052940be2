"""A private containerd (Debian's 1.6) with the pyunion snapshotter as a proxy plugin.

Everything lives below one short temporary directory (unix socket paths are limited to 108
bytes): containerd's ``config.toml`` (root, state and socket there, the CRI plugin disabled,
``[proxy_plugins.pyunion]`` pointing at the snapshotter's socket), the pyunion store the
snapshotter serves, and the logs (both daemons with the venv's ``bin`` first on PATH).
``close`` stops both (SIGTERM, then SIGKILL, by pid), unmounts what is still mounted below the
directory and deletes it.

Waits are for conditions, with deadlines generous enough for a loaded 2-CPU machine: a daemon's
socket accepting connections, containerd reaching a restarted snapshotter (its gRPC client to a
proxy plugin reconnects after a back-off of up to about 3 s, and a call made before that fails
with ``unavailable``: ``retry_unavailable``), the background removal of snapshots (``wait``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import containerd
from tests.cli_helpers import mounts_below, undo_mounts

VENV_BIN = str(Path(sys.executable).parent)
PYUNION = [sys.executable, "-m", "unionfs.image.cli"]
NAMESPACE = "pyunion-tests"
# Deadlines of the waits: far above what a quiet machine needs (a fraction of a second to a few
# seconds), so that only a real failure reaches them.
START_TIMEOUT = 90  # a daemon's socket answering (a Python start, gRPC imported)
WAIT_TIMEOUT = 120  # what a test waits for (background removals, containerd's GC)
# containerd's client to a proxy plugin backs off up to 3 s (+20 % jitter) between connection
# attempts; 40 tries a second apart outlast several of its back-offs.
UNAVAILABLE_RETRIES = 40
# how ctr reports a gRPC Unavailable from the snapshotter (containerd's errdefs: "...: connection
# closed: unavailable", "... connect: connection refused: unavailable")
UNAVAILABLE = re.compile(r"\bunavailable\b|code = Unavailable")


def _wait_for_socket(path: Path, proc: subprocess.Popen, log: Path,
                     timeout: float = START_TIMEOUT) -> None:
    """Until something accepts connections on ``path`` (a killed daemon's socket file stays)."""
    if not containerd.wait_for_socket(path, proc, timeout):
        raise AssertionError(f"{proc.args[0]} did not start:\n{log.read_text()[-3000:]}")


class Containerd:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
        self.store = self.base / "store"
        self.address = self.base / "containerd.sock"
        self.snapshotter_address = self.base / "snapshotter.sock"
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin')}"}
        (self.base / "config.toml").write_text(
            containerd.config_toml(self.base, self.address, self.snapshotter_address))
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

    def restart_snapshotter(self, options: tuple[str, ...] = ()) -> None:
        """SIGTERM, then a new snapshotter on the same store; containerd's next call through
        it may fail with ``unavailable`` until its client reconnects (``retry_unavailable``)."""
        self.stop_snapshotter()
        self.start_snapshotter(options=options)

    def stop_containerd(self) -> None:
        containerd.stop(self.containerd, timeout=15)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None, retry_unavailable: bool = False
            ) -> subprocess.CompletedProcess[str]:
        """``retry_unavailable``: a call failing with gRPC's ``unavailable`` (containerd not
        reconnected to a restarted snapshotter yet) is made again, a second later, up to
        ``UNAVAILABLE_RETRIES`` times; only for calls that change nothing when they fail so
        (a pull, a ``run --rm``: its container is made after its snapshot)."""
        cmd = ["ctr", "--address", str(self.address), "--namespace", NAMESPACE]
        for attempt in range(UNAVAILABLE_RETRIES if retry_unavailable else 1):
            if attempt:
                time.sleep(1)
            result = subprocess.run([*cmd, *args], env={**self.env, **(env or {})}, text=True,
                                    capture_output=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
            if result.returncode == 0 or not UNAVAILABLE.search(result.stderr):
                break
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}\n{self.log_tails()}")
        return result

    def pull(self, ref: str, snapshotter: str = "pyunion") -> None:
        """``ctr images pull`` (from the tests' plain-http registry), retried while containerd
        reconnects to the snapshotter."""
        self.ctr("images", "pull", "--plain-http", "--snapshotter", snapshotter, ref,
                 retry_unavailable=True)

    def run(self, ref: str, name: str, script: str, *, rm: bool = True,
            snapshotter: str = "pyunion", retry_unavailable: bool = False
            ) -> subprocess.CompletedProcess[str]:
        """``ctr run`` of ``sh -c SCRIPT``; its status, and the stdout and stderr it wrote into
        files of a host directory bind-mounted at ``/out`` (``output``): on a loaded machine,
        containerd's stdio fifos can lose what a process wrote just before it exited (seen:
        status 3 and no stdout at all)."""
        out = self.base / "out" / name
        out.mkdir(parents=True, exist_ok=True)
        result = self.ctr("run", *(["--rm"] if rm else []), "--snapshotter", snapshotter,
                          "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw", ref,
                          name, "sh", "-c", f"exec >/out/stdout 2>/out/stderr; {script}",
                          check=False, retry_unavailable=retry_unavailable)
        return self.output(name, result)

    def output(self, name: str, result: subprocess.CompletedProcess[str]
               ) -> subprocess.CompletedProcess[str]:
        """``result`` (a ``ctr run`` or ``ctr tasks start`` of ``run``'s container ``name``)
        with the stdout and stderr its process wrote (ctr's own stderr after the latter)."""
        out = self.base / "out" / name
        stdout, stderr = ((out / f).read_text() if (out / f).exists() else ""
                          for f in ("stdout", "stderr"))
        return subprocess.CompletedProcess(result.args, result.returncode, stdout,
                                           stderr + result.stderr)

    def wait(self, predicate, what: str, timeout: float = WAIT_TIMEOUT):
        """Until ``predicate()`` is true (returned); at the deadline an AssertionError with
        the end of both daemons' logs."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                     f"{self.log_tails()}")
            time.sleep(0.1)
        return value

    def log_tails(self, size: int = 3000) -> str:
        tails = []
        for name in ("snapshotter.log", "containerd.log"):
            log = self.base / name
            if log.exists():
                tails.append(f"--- end of {name}:\n{log.read_text(errors='replace')[-size:]}")
        return "\n".join(tails)

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
        containerd.stop(self.containerd, timeout=15)
        containerd.stop(self.snapshotter, timeout=15)
        left = mounts_below([self.base])
        undo_mounts(left)
        shutil.rmtree(self.base, ignore_errors=True)
        return sorted(left)
