"""The image manager as an ordinary user (uid 65534): its own store, images loaded and mounted
through fusermount3, and a container run by runc in a user namespace (root inside). Files of
other owners and device nodes are kept in user.containers.override_stat: the reference for
what the mounts show and what commit/save write is the tarball the image came from.

Each run happens in a private mount namespace whose /dev holds 0666 nodes (as udev makes them;
this machine's own /dev/fuse is root's 0600, which fusermount3 cannot open for another user).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.cli_helpers import AS_NOBODY, NOBODY, WITHOUT_DEV_FUSE, public_dir

# net/tun: slirp4netns's, an ordinary user's default network (as rootless podman's)
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0), ("fuse", 10, 229), ("net/tun", 10, 200))
WITH_USER_DEVICES = [
    *WITHOUT_DEV_FUSE[:6],
    "mount -t tmpfs none /dev && mkdir /dev/net && mk() { mknod -m 666 /dev/$1 c $2 $3; } && "
    + " && ".join(f"mk {n} {a} {b}" for n, a, b in DEVICES) + ' && exec "$@"',
    "sh",
    *AS_NOBODY,
]
PYUNION = f"{sys.executable} -m unionfs.image.cli"
# The same, and the user has subordinate ids 200000-265535 (in a copy of /etc, with
# user_allow_other in its fuse.conf): its containers map ids 0-65535.
WITH_SUBORDINATE_IDS = [
    *WITHOUT_DEV_FUSE[:6],
    "etc=$(mktemp -d) && cp -a /etc/. $etc && echo 65534:200000:65536 > $etc/subuid"
    " && cp $etc/subuid $etc/subgid && echo user_allow_other > $etc/fuse.conf"
    " && mount --bind $etc /etc && " + WITH_USER_DEVICES[6].removesuffix(' && exec "$@"')
    + ' && exec "$@"',
    "sh",
    *AS_NOBODY,
]

def run_session(pub: Path, harness: list[str], session: str) -> str:
    """Runs a shell session of pyunion commands as the user, its store and home in ``pub``;
    returns its output (it must succeed)."""
    env = {**os.environ, "HOME": str(pub), "XDG_DATA_HOME": str(pub / "data"),
           "XDG_RUNTIME_DIR": str(pub), "PYTHONPATH": os.getcwd()}
    env.pop("PYUNION_ROOT", None)
    result = subprocess.run([*harness, "sh", "-c", session.format(p=PYUNION)], cwd=pub, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


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
        out = run_session(pub, WITH_USER_DEVICES, SESSION)
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


OWNERS_SESSION = """
set -e
{p} import -q rootfs.tar owners:1
{p} mount-image owners:1 mnt
stat -c 'outside %n %u %g %a %F %t,%T' mnt/etc/shadow mnt/dev/null mnt/var/lib/apt mnt/bin/su
{p} umount-image mnt
{p} run --rm owners:1 stat -c 'inside %n %u %g %a' /etc/shadow /var/lib/apt /bin/su
{p} run --name c owners:1 sh -c 'echo x > /etc/new && chmod 0600 /etc/new && chown 0:0 /etc/new'
{p} commit -q c owners:2 >/dev/null
{p} save -o saved.tar owners:2
"""

# name -> (type, uid, gid, mode, device numbers): the tarball's entries besides busybox
OWNED_ENTRIES = {
    "etc/shadow": (tarfile.REGTYPE, 0, 42, 0o640, None),
    "dev/null": (tarfile.CHRTYPE, 0, 0, 0o666, (1, 3)),
    "var/lib/apt": (tarfile.DIRTYPE, 100, 101, 0o755, None),
    "bin/su": (tarfile.REGTYPE, 0, 0, 0o4755, None),
}


def owners_tarball(path: Path) -> None:
    """A rootfs tarball with busybox and files of several owners, a set-uid file, a device."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("bin", "dev", "etc", "var", "var/lib"):
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0, 0, 0o755))
        with open("/bin/busybox", "rb") as f:
            info = _entry("bin/busybox", tarfile.REGTYPE, 0, 0, 0o755)
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)
        for applet in ("sh", "stat", "chmod", "chown", "cat", "id", "touch"):
            link = _entry(f"bin/{applet}", tarfile.SYMTYPE, 0, 0, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        for name, (kind, uid, gid, mode, device) in OWNED_ENTRIES.items():
            info = _entry(name, kind, uid, gid, mode)
            if device:
                info.devmajor, info.devminor = device
            data = b"root:*:1:0:99999:7:::\n" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _entry(name: str, kind: bytes, uid: int, gid: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.uid, info.gid, info.mode, info.mtime = kind, uid, gid, mode, 1_700_000_000
    return info


def saved_entries(archive: Path, work: Path) -> dict[str, tarfile.TarInfo]:
    """The entries of every layer of a saved image, as skopeo reads the archive."""
    layout = work / "layout"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", f"docker-archive:{archive}",
                    f"oci:{layout}:saved"], check=True, timeout=120)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    entries: dict[str, tarfile.TarInfo] = {}
    for layer in manifest["layers"]:
        blob = layout / "blobs/sha256" / layer["digest"].split(":")[1]
        with tarfile.open(blob) as tar:
            entries.update((m.name.removeprefix("./").rstrip("/"), m) for m in tar)
    return entries


def test_owners_modes_and_devices_are_kept_for_an_ordinary_user() -> None:
    with public_dir() as pub:
        owners_tarball(pub / "rootfs.tar")
        (pub / "mnt").mkdir()
        for path in (pub, pub / "rootfs.tar", pub / "mnt"):
            os.chown(path, NOBODY, NOBODY)
        lines = run_session(pub, WITH_USER_DEVICES, OWNERS_SESSION).splitlines()
        # Mounted for the user: what the tarball says (the layer's real files are the user's).
        assert "outside mnt/etc/shadow 0 42 640 regular file 0,0" in lines
        assert "outside mnt/dev/null 0 0 666 character special file 1,3" in lines
        assert "outside mnt/var/lib/apt 100 101 755 directory 0,0" in lines
        assert "outside mnt/bin/su 0 0 4755 regular file 0,0" in lines
        # In the container (only root is mapped): root's files are root's, others nobody's.
        assert f"inside /etc/shadow 0 {NOBODY} 640" in lines
        assert f"inside /var/lib/apt {NOBODY} {NOBODY} 755" in lines
        assert "inside /bin/su 0 0 4755" in lines
        # Committed and saved: the true owners, modes and device, read back by skopeo.
        saved = saved_entries(pub / "saved.tar", pub)
        for name, (kind, uid, gid, mode, device) in OWNED_ENTRIES.items():
            entry = saved[name]
            assert (entry.type, entry.uid, entry.gid, entry.mode) == (kind, uid, gid, mode), name
            if device:
                assert (entry.devmajor, entry.devminor) == device
        new = saved["etc/new"]
        assert (new.uid, new.gid, new.mode) == (0, 0, 0o600)
        assert not any("override_stat" in key for entry in saved.values()
                       for key in entry.pax_headers)


SUBORDINATE_SESSION = """
set -e
{p} import -q rootfs.tar owners:1
{p} info | grep 'container ids'
show='cat /proc/self/uid_map; stat -c "inside %n %u %g %a" /etc/shadow /var/lib/apt'
{p} run --rm owners:1 sh -c "$show"
{p} run --name c --user 100:101 owners:1 sh -c 'echo "uid $(id -u)"; touch /var/lib/apt/mine'
{p} run --rm owners:1 stat -c 'unrecorded %n %u %g' / /etc /bin/sh
{p} commit -q c owners:2 >/dev/null
{p} run --name d owners:2 sh -c 'mkdir /etc/new.d && ln -s ../shadow /etc/new.d/link'
{p} commit -q d owners:3 >/dev/null
{p} save -o saved.tar owners:3
"""


def test_subordinate_ids_map_every_owner_into_the_container() -> None:
    with public_dir() as pub:
        owners_tarball(pub / "rootfs.tar")
        for path in (pub, pub / "rootfs.tar"):
            os.chown(path, NOBODY, NOBODY)
        out = run_session(pub, WITH_SUBORDINATE_IDS, SUBORDINATE_SESSION)
        lines = [" ".join(line.split()) for line in out.splitlines()]
        assert "ids 0-65535 mapped" in out
        assert f"0 {NOBODY} 1" in lines and "1 200000 65535" in lines  # the uid_map
        assert "inside /etc/shadow 0 42 640" in lines  # every owner as the layer says
        assert "inside /var/lib/apt 100 101 755" in lines
        assert "uid 100" in lines
        # What records no owner (symlinks; the user's own files) is the container's root's.
        for path in ("/", "/etc", "/bin/sh"):
            assert f"unrecorded {path} 0 0" in lines
        saved = saved_entries(pub / "saved.tar", pub)
        assert (saved["var/lib/apt/mine"].uid, saved["var/lib/apt/mine"].gid) == (100, 101)
        for name in ("etc/new.d", "etc/new.d/link"):
            assert (saved[name].uid, saved[name].gid) == (0, 0), name
