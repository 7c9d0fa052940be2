"""podman with a private store whose overlay driver mounts through a ``mount_program``.

Everything lives below one short temporary directory (a graphroot path longer than ~50 bytes
makes ``podman run`` unable to attach), with its own ``storage.conf``, ``containers.conf`` and
``registries.conf``; ``podman`` always gets ``--root``/``--runroot``/``--storage-driver`` and
the mount program as ``--storage-opt`` (with ``--root`` on its command line podman does not read
the driver's options from ``storage.conf``), ``--runtime runc --cgroup-manager cgroupfs
--events-backend file``. ``close`` removes every container, unmounts what is still mounted
below the directory (and says so) and deletes it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cli_helpers import mounts_below, undo_mounts

PYUNION_OVERLAYFS = str(Path(sys.executable).parent / "pyunion-overlayfs")
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"


class Podman:
    def __init__(self, mount_program: str, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
        self.mount_program = mount_program
        self.graph, self.runroot = self.base / "g", self.base / "r"
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        (self.base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.graph}"\n'
            f'runroot = "{self.runroot}"\n[storage.options.overlay]\n'
            f'mount_program = "{mount_program}"\n')
        (self.base / "containers.conf").write_text(
            "[containers]\n"
            f'netns = "host"\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
            '"nproc=4096:4096"]\n'
            f'[engine]\nruntime = "runc"\ntmp_dir = "{self.base}/tmp"\n'
            f'events_logger = "file"\nevents_logfile_path = "{self.base}/events.log"\n'
            f'[network]\nnetwork_config_dir = "{self.base}/net"\n')
        (self.base / "registries.conf").write_text("")
        self.env = {**os.environ,
                    "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"),
                    "CONTAINERS_CONF": str(self.base / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.base / "registries.conf")}

    def command(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.graph), "--runroot", str(self.runroot),
                "--storage-driver", "overlay",
                "--storage-opt", f"overlay.mount_program={self.mount_program}",
                "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 90,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), env=self.env, capture_output=True,
                                text=True, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def mounts(self) -> list[str]:
        return sorted(mounts_below([self.base]))

    def close(self) -> list[str]:
        """Removes containers and the store; returns what was still mounted before that."""
        if self.graph.exists():
            self("rm", "-a", "-f", "-t", "0", check=False)
            self("umount", "-a", check=False)
        left = mounts_below([self.base])
        undo_mounts(left)
        shutil.rmtree(self.base, ignore_errors=True)
        return sorted(left)
