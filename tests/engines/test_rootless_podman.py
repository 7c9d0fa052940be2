"""Rootless podman (uid 65534) with ``pyunion-overlayfs`` as the user's mount program.

The user runs in a mount namespace of this test whose ``/dev`` is a tmpfs with 0666 nodes
(this machine's ``/dev/fuse`` is root's 0600, udev would make it 0666) and a ``/dev/shm``
(podman's locks), and whose ``/`` is shared (as rootless podman expects). uid 65534 has no
subordinate ids (and /etc is not edited), so podman maps only the user (its "single mapping")
and ignores chown errors. podman's pause process is killed by its pid file at the end, which
ends the user's namespaces and with them every mount made in them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.cli_helpers import AS_NOBODY, NOBODY, mounts_below
from tests.engines.podman import PYUNION_OVERLAYFS

pytestmark = pytest.mark.timeout(240)

NAMESPACE_SETUP = (
    "mount -t tmpfs -o mode=755 none /dev"
    " && for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 fuse:10:229;"
    ' do IFS=: read name major minor <<EOF\n$node\nEOF\n'
    ' mknod -m 666 "/dev/$name" c "$major" "$minor" || exit 1; done'
    " && mkdir /dev/shm && mount -t tmpfs -o mode=1777 shm /dev/shm"
    ' && mount --make-rshared / && exec "$@"')

SCRIPT = """
set -e
P="podman --root $BASE/g --runroot $BASE/r --storage-driver overlay
   --storage-opt overlay.mount_program=$PROGRAM --storage-opt overlay.ignore_chown_errors=true
   --runtime runc --cgroup-manager cgroupfs --events-backend file"
$P import -q "$BASE/busybox.tar" localhost/bb:1 >/dev/null
$P run --name c1 localhost/bb:1 sh -c 'echo written > /new; rm /etc/group; cat /new; id -u;
  grep -E "^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / " /proc/self/mountinfo'
$P commit -q c1 localhost/bb:2 >/dev/null
$P rm c1 >/dev/null
$P run --rm localhost/bb:2 sh -c 'cat /new; ls /etc'
"""


def _busybox_tar(path: Path) -> None:
    root = path.parent / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "cat", "echo", "ls", "id", "grep", "rm"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    with tarfile.open(path, "w") as tar:
        tar.add(root, arcname=".")
    shutil.rmtree(root)


def test_rootless_podman_with_pyunion_overlayfs():
    base = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))  # short: podman's attach socket
    try:
        base.chmod(0o755)
        _busybox_tar(base / "busybox.tar")
        for name in ("home", "xdg", "tmp"):
            (base / name).mkdir(mode=0o700)
        (base / "containers.conf").write_text(
            '[containers]\nnetns = "host"\n[engine]\nruntime = "runc"\n'
            f'cgroup_manager = "cgroupfs"\nevents_logger = "file"\ntmp_dir = "{base}/tmp"\n'
            f'events_logfile_path = "{base}/events.log"\n')
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/g"\nrunroot = "{base}/r"\n'
            f'[storage.options.overlay]\nmount_program = "{PYUNION_OVERLAYFS}"\n')
        (base / "registries.conf").write_text("")
        for dirpath, dirnames, filenames in os.walk(base):
            for name in (".", *dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        env = {"PATH": os.environ["PATH"], "BASE": str(base), "PROGRAM": PYUNION_OVERLAYFS,
               "HOME": f"{base}/home", "XDG_RUNTIME_DIR": f"{base}/xdg",
               "CONTAINERS_CONF": f"{base}/containers.conf",
               "CONTAINERS_STORAGE_CONF": f"{base}/storage.conf",
               "CONTAINERS_REGISTRIES_CONF": f"{base}/registries.conf"}
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE_SETUP, "sh",
             *AS_NOBODY, "sh", "-c", SCRIPT], env=env, capture_output=True, text=True,
            timeout=180, cwd=base)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["written", "0"]
        fstype, source = lines[2].split(" - ")[1].split()[:2]
        assert (fstype, source) == ("fuse.pyunion", "pyunion-overlayfs")
        committed_etc = lines[4:]  # podman adds hostname, hosts, resolv.conf
        assert lines[3] == "written"
        assert "passwd" in committed_etc and "group" not in committed_etc
    finally:
        pause = base / "tmp/pause.pid"
        if pause.exists():
            os.kill(int(pause.read_text()), signal.SIGKILL)
        left = mounts_below([base])
        shutil.rmtree(base, ignore_errors=True)
    assert not left
