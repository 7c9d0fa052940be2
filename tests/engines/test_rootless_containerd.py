"""Rootless containerd (Debian's 1.6, as uid 65534 inside ``rootlesskit``) with the pyunion
snapshotter running in the same namespaces, as containerd's rootless setup runs
fuse-overlayfs-snapshotter.

As in test_rootless_podman.py, the user runs in a mount namespace of this test whose ``/dev``
is a tmpfs with 0666 nodes (``/dev/fuse`` is root's 0600 here). rootlesskit maps a range of
subordinate ids: ``/etc/subuid`` and ``/etc/subgid`` are bind mounts, in that namespace only,
of a file giving uid 65534 one (``/etc`` is not edited). Inside, as containerd's rootless
script does: ``/run/containerd`` made writable (the shims' sockets), ``ctr run --cgroup ""
--cpu-shares 0`` (cgroup v1 is not delegated to the user) and a fifo directory of the test's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import containerd
from tests.cli_helpers import AS_NOBODY, NOBODY

pytestmark = pytest.mark.timeout(240)

NAMESPACE_SETUP = (
    'mount --bind "$BASE/subid" /etc/subuid && mount --bind "$BASE/subid" /etc/subgid'
    " && mount -t tmpfs -o mode=755 none /dev"
    " && for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 fuse:10:229;"
    ' do IFS=: read name major minor <<EOF\n$node\nEOF\n'
    ' mknod -m 666 "/dev/$name" c "$major" "$minor" || exit 1; done'
    " && mkdir /dev/shm && mount -t tmpfs -o mode=1777 shm /dev/shm"
    ' && mount --make-rshared / && exec "$@"')

SCRIPT = r"""
set -e
rm -rf /run/containerd /run/runc && mkdir -p /run/containerd /run/runc
"$PY" -m unionfs.image.cli --root "$BASE/store" snapshotter --address "$BASE/s.sock" \
    2>"$BASE/snapshotter.log" &
SNAP=$!
containerd --config "$BASE/config.toml" >"$BASE/containerd.log" 2>&1 &
CTRD=$!
trap 'kill $CTRD $SNAP 2>/dev/null; wait' EXIT
for i in $(seq 900); do [ -S "$BASE/c.sock" ] && [ -S "$BASE/s.sock" ] && break; sleep 0.1; done
[ -S "$BASE/c.sock" ] && [ -S "$BASE/s.sock" ] || { echo "the daemons did not start" >&2; exit 1; }
C="ctr --address $BASE/c.sock --namespace rootless"
$C images import --snapshotter pyunion "$BASE/busybox.tar" >/dev/null
$C images import --snapshotter overlayfs "$BASE/busybox.tar" >/dev/null
REF=$($C images ls -q | head -n 1)
# what the containers print goes to files of $BASE/out, bind-mounted at /out: containerd's stdio
# fifos can lose the output of a process that exits at once on a loaded machine
mkdir -p "$BASE/out"
run() {
    s=$1; shift
    $C run --rm --cgroup "" --cpu-shares 0 --fifo-dir "$BASE/fifo" --snapshotter "$s" \
        --mount "type=bind,src=$BASE/out,dst=/out,options=rbind:rw" "$REF" "$@"
}
# (absolute paths: the image's Env has no PATH, and containerd 1.6 then sets none)
run pyunion c1 /bin/sh -c 'PATH=/bin; exec >/out/c1; echo written > /new; cat /new; id -u;
  grep -E "^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / " /proc/self/mountinfo'
run pyunion c2 /bin/sh -c '/bin/ls -lnR /bin /etc /srv > /out/ours'
run overlayfs c3 /bin/sh -c '/bin/ls -lnR /bin /etc /srv > /out/theirs'
cat "$BASE/out/c1"
[ -s "$BASE/out/ours" ] && cmp "$BASE/out/ours" "$BASE/out/theirs" && echo same
$C images rm --sync "$REF" >/dev/null
kill $CTRD && wait $CTRD || true
kill $SNAP && wait $SNAP || true
trap - EXIT
echo "snapshots left: $(ls "$BASE/store/snapshots" | wc -l)"
echo "mounts left: $(grep -c "$BASE/store" /proc/self/mountinfo || true)"
"""


def test_rootless_containerd_with_the_snapshotter(base_tar):
    base = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: unix socket paths
    try:
        base.chmod(0o755)
        shutil.copy(base_tar, base / "busybox.tar")
        (base / "subid").write_text("nobody:200000:65536\n")  # (by uid, rootlesskit maps it twice)
        (base / "config.toml").write_text(
            containerd.config_toml(base, base / "c.sock", base / "s.sock"))
        for dirpath, dirnames, filenames in os.walk(base):
            for name in (".", *dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        (base / "subid").chmod(0o644)
        os.chown(base / "subid", 0, 0)  # newuidmap wants root's file
        venv_bin = str(Path(sys.executable).parent)
        env = {"PATH": f"{venv_bin}:{os.environ['PATH']}", "BASE": str(base),
               "PY": sys.executable, "HOME": str(base), "XDG_RUNTIME_DIR": str(base)}
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE_SETUP, "sh",
             *AS_NOBODY, "rootlesskit", "--net=host", "--copy-up=/etc", "--copy-up=/run",
             f"--state-dir={base}/rootlesskit", "--propagation=rslave",
             "bash", "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=200,
            cwd=base)
        logs = "".join((base / name).read_text(errors="replace")[-2000:]
                       for name in ("snapshotter.log", "containerd.log")
                       if (base / name).exists())
        assert result.returncode == 0, result.stdout + result.stderr[:600] + logs
        lines = result.stdout.splitlines()
        assert lines[:2] == ["written", "0"]
        fstype, source = lines[2].split(" - ")[1].split()[:2]
        assert (fstype, source) == ("fuse.pyunion", "pyunion")
        assert lines[3:] == ["same", "snapshots left: 0", "mounts left: 0"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
