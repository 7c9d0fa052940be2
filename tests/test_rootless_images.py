"""The image manager as an ordinary user (uid 65534): its own store, images loaded and mounted
through fusermount3, and a container run by runc in a user namespace (root inside).

Each run happens in a private mount namespace whose /dev holds 0666 nodes (as udev makes them;
this machine's own /dev/fuse is root's 0600, which fusermount3 cannot open for another user).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

from tests.cli_helpers import AS_NOBODY, NOBODY, WITHOUT_DEV_FUSE, public_dir

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0), ("fuse", 10, 229))
WITH_USER_DEVICES = [
    *WITHOUT_DEV_FUSE[:6],
    "mount -t tmpfs none /dev && mk() { mknod -m 666 /dev/$1 c $2 $3; } && "
    + " && ".join(f"mk {n} {a} {b}" for n, a, b in DEVICES) + ' && exec "$@"',
    "sh",
    *AS_NOBODY,
]
PYUNION = f"{sys.executable} -m unionfs.image.cli"

SESSION = """
set -e
{p} import -q rootfs base:1
{p} images
{p} mount-image base:1 mnt
ls mnt/bin
stat -c '%u %n' mnt/etc/passwd
{p} umount-image mnt
{p} run --rm base:1 id
{p} create --name c base:1 >/dev/null
echo changed > "$({p} mount c)/etc/motd"
{p} umount c
{p} diff c
{p} commit -q c app:1 >/dev/null
{p} run --rm app:1 cat /etc/motd
{p} rm c >/dev/null
{p} info
"""


def test_ordinary_user_loads_mounts_runs_and_commits() -> None:
    with public_dir() as pub:
        rootfs = pub / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "etc").mkdir()
        shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
        for applet in ("sh", "id", "cat", "ls"):
            os.symlink("busybox", rootfs / "bin" / applet)
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (rootfs / "etc/motd").write_text("base\n")
        (pub / "mnt").mkdir()
        for dirpath, dirnames, filenames in os.walk(pub):
            for name in [*dirnames, *filenames, "."]:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
        env = {**os.environ, "HOME": str(pub), "XDG_DATA_HOME": str(pub / "data"),
               "XDG_RUNTIME_DIR": str(pub), "PYTHONPATH": os.getcwd()}
        env.pop("PYUNION_ROOT", None)
        result = subprocess.run([*WITH_USER_DEVICES, "sh", "-c", SESSION.format(p=PYUNION)],
                                cwd=pub, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "base         1" in out
        assert "busybox" in out and "sh" in out
        assert f"{NOBODY} mnt/etc/passwd" in out  # one mapped id: files are the user's
        assert "uid=0(root)" in out  # root inside the user namespace
        assert "C /etc\nA /etc/motd" not in out and "C /etc/motd" in out
        assert "changed\n" in out
        assert "mode: rootless" in out and "whiteouts: OCI form" in out
        store = pub / "data" / "pyunion"
        assert (store / "db.sqlite").exists()
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
        for layer in (store / "layers").iterdir():
            assert os.stat(layer).st_uid == NOBODY
