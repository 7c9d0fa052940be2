"""A private containerd with the pyunion snapshotter as a proxy plugin: what the benchmark's
engine rows (``bench.engines``) and the engine tests (``tests/engines/containerd.py``) both
need to start and stop one.

Here, not in ``tests/``: the benchmark must not import the tests, while the tests may import
the benchmark's helpers (as ``tests/build`` does ``bench.images``); not in ``unionfs/``:
nothing a user of pyunion runs needs it. Standard library only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def config_toml(base: Path, address: Path, snapshotter_address: Path) -> str:
    """containerd's ``config.toml``: root, state and ttrpc socket below ``base``, its gRPC
    socket at ``address``, the CRI plugin disabled, ``[proxy_plugins.pyunion]`` pointing at
    the snapshotter's socket."""
    return ("version = 2\n"
            f'root = "{base}/root"\nstate = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{address}"\n'
            f'[ttrpc]\n  address = "{base}/ttrpc.sock"\n'
            "[proxy_plugins.pyunion]\n"
            f'  type = "snapshot"\n  address = "{snapshotter_address}"\n')


def answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (a killed daemon's
    socket file stays, refusing them)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Until ``path`` answers (True), ``proc`` has exited or ``timeout`` seconds have passed
    (False: the caller says why, with its log)."""
    deadline = time.monotonic() + timeout
    while not answers(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, for a daemon started here."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
