"""``pyunion-overlayfs``: fuse-overlayfs's command line, as containers/storage runs its
``mount_program``, and podman 4.3 with it against podman with fuse-overlayfs itself.

The podman tests run the same scenario (import, a container writing into and deleting from its
rootfs, ``commit``, ``build`` with a ``RUN``, ``image mount``) in a store whose mount program is
``pyunion-overlayfs`` and in one whose mount program is fuse-overlayfs, and compare the
outputs and the final image's tree; the container's ``/`` must be pyunion's mount, and nothing
may stay mounted.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from mount_helper.overlayfs_compat import translate
from tests.cli_helpers import mount_info, mounts_below, undo_mounts
from tests.container.conftest import build_rootfs, differences, snapshot
from tests.engines.podman import FUSE_OVERLAYFS, PYUNION_OVERLAYFS, Podman
from unionfs.fs.options import MountError

pytestmark = pytest.mark.timeout(240)


# --------------------------------------------------------------------------- the command line


def test_translate_containers_storage_command_line():
    argv = ["-o", "lowerdir=l/A:l/B,upperdir=X/diff,workdir=X/work,,volatile", "X/merged"]
    assert translate(argv) == ["pyunion-overlayfs", "X/merged", "-o",
                               "lowerdir=l/A:l/B,upperdir=X/diff,workdir=X/work,volatile"]


def test_translate_repeated_options_and_fuse_overlayfs_options():
    argv = ["-f", "-o", "lowerdir=a", "-oupperdir=u,workdir=w", "-o",
            "fsync=0,threaded=1,fast_ino=1,noacl,uidmapping=0:1000:1,xattr_permissions=2",
            "m"]
    assert translate(argv) == ["pyunion-overlayfs", "m", "-f", "-o",
                               "lowerdir=a,upperdir=u,workdir=w,volatile,uidmapping=0:1000:1,"
                               "xattr_permissions=2"]
    assert translate(["-o", "lowerdir=a,fsync=1,,", "m"])[-1] == "lowerdir=a"
    assert translate(["-o", r"lowerdir=a\,b", "m"])[-1] == r"lowerdir=a\,b"
    # as mount.fuse3 runs it
    assert translate(["src", "m", "-o", "rw,lowerdir=a,dev,suid"]) == [
        "src", "m", "-o", "rw,lowerdir=a,dev,suid"]


@pytest.mark.parametrize("argv, message", [
    (["-o", "upperdir=u", "m"], "lowerdir= is required"),
    (["-o", "lowerdir=a"], r"expected \[SOURCE\] MERGED"),
    (["-o", "lowerdir=a", "s", "m", "n"], r"expected \[SOURCE\] MERGED"),
    (["-o", "lowerdir=a,squash_to_root", "m"], "squash_to_root"),
    (["-o", "lowerdir=a,fsync=2", "m"], "fsync=2"),
    (["-x", "-o", "lowerdir=a", "m"], "unknown flag '-x'"),
    (["-o"], "-o needs an option string"),
])
def test_translate_refuses(argv, message):
    with pytest.raises(MountError, match=message):
        translate(argv)


def test_bad_command_line_one_line_and_nothing_mounted(tmp_path):
    (tmp_path / "m").mkdir()
    result = subprocess.run([PYUNION_OVERLAYFS, "-o", "lowerdir=missing,,", "m"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.startswith("pyunion-overlayfs: ") and result.stderr.count("\n") == 1
    assert "missing" in result.stderr
    assert not mounts_below([tmp_path])


def test_read_only_view_with_relative_lowers(tmp_path):
    """containers/storage's read-only form (``lowerdir=ID/diff:l/A``, no upperdir), its paths
    relative to the directory it runs the program in."""
    (tmp_path / "l/A/d").mkdir(parents=True)
    (tmp_path / "l/A/d/base").write_text("base\n")
    (tmp_path / "l/A/d/gone").write_text("gone\n")
    (tmp_path / "top/diff/d").mkdir(parents=True)
    (tmp_path / "top/diff/d/.wh.gone").write_text("")  # containers/storage's AUFS whiteouts
    (tmp_path / "top/diff/d/new").write_text("new\n")
    (tmp_path / "merged").mkdir()
    try:
        subprocess.run([PYUNION_OVERLAYFS, "-o", "lowerdir=top/diff:l/A,,", "merged"],
                       cwd=tmp_path, check=True, timeout=30)
        info = mount_info(tmp_path / "merged")
        assert (info.fstype, info.source) == ("fuse.pyunion", "pyunion-overlayfs")
        assert "ro" in info.mount_options
        assert sorted(os.listdir(tmp_path / "merged/d")) == ["base", "new"]
        with pytest.raises(OSError):
            (tmp_path / "merged/d/x").write_text("x")
    finally:
        subprocess.run(["fusermount3", "-u", str(tmp_path / "merged")], timeout=30)
        left = mounts_below([tmp_path])
        undo_mounts(left)
    assert not left


def test_waits_for_the_previous_daemon_of_its_upper(tmp_path):
    """A mount of an upper whose lock another process still holds (the daemon of the previous
    mount, exiting after its unmount, as containerd remounts at once) waits for it."""
    for name in ("l", "u", "w", "m"):
        (tmp_path / name).mkdir()
    fd = os.open(tmp_path / "u", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        helper = subprocess.Popen([PYUNION_OVERLAYFS, "-o", "lowerdir=l,upperdir=u,workdir=w",
                                   "m"], cwd=tmp_path)
        # until its daemon has the upper open (to lock it): on a loaded machine a fixed sleep
        # could end before the daemon even started
        deadline = time.monotonic() + 60
        while not _opened_elsewhere(tmp_path / "u"):
            assert helper.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert helper.poll() is None and mount_info(tmp_path / "m") is None
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert helper.wait(timeout=30) == 0
        assert mount_info(tmp_path / "m").fstype == "fuse.pyunion"
    finally:
        os.close(fd)
        subprocess.run(["fusermount3", "-u", str(tmp_path / "m")], timeout=30)
        left = mounts_below([tmp_path])
        undo_mounts(left)
    assert not left


def _opened_elsewhere(path: Path) -> bool:
    """Whether a process other than this one has ``path`` open."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
            except OSError:
                continue
    return False


# --------------------------------------------------------------------------- podman


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("podman-busybox")
    build_rootfs(base / "rootfs")
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as out:
        out.add(base / "rootfs", arcname=".")
    return tar


WRITE = ("mkdir /d && echo data > /d/f && rm /srv/lower/a.txt && rm -r /srv/doomed"
         " && chmod 600 /srv/lower/mode.txt && echo more >> /srv/tree/x && cat /d/f /srv/tree/x"
         " && ls /srv/lower && grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo")
CONTAINERFILE = "FROM localhost/bb:2\nRUN echo built > /built && rm /d/f && ln -s built /b\n"


def scenario(podman: Podman, busybox_tar: Path) -> dict:
    """The same steps for either mount program; what each step showed, and the built image."""
    seen: dict = {}
    podman("import", str(busybox_tar), "localhost/bb:1")
    out = podman("run", "--name", "c1", "localhost/bb:1", "sh", "-c", WRITE).stdout
    *shown, root_line = out.splitlines()
    seen["run"] = shown
    seen["root"] = root_line.split(" - ")[1].split()[:2]  # fstype, source
    podman("commit", "-q", "c1", "localhost/bb:2")
    podman("rm", "c1")
    seen["committed"] = podman("run", "--rm", "localhost/bb:2", "sh", "-c",
                               "cat /d/f; ls /srv /srv/lower; stat -c %a /srv/lower/mode.txt"
                               ).stdout
    context = podman.base / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text(CONTAINERFILE)
    podman("build", "-q", "--network", "host", "-t", "localhost/bb:3", str(context))
    seen["built"] = podman("run", "--rm", "localhost/bb:3", "sh", "-c",
                           "cat /b; ls -a /d").stdout
    mountpoint = podman("image", "mount", "localhost/bb:3").stdout.strip()
    try:
        seen["mounted_fstype"] = mount_info(mountpoint).fstype
        seen["tree"] = snapshot(mountpoint)
    finally:
        podman("image", "unmount", "localhost/bb:3")
    seen["left_mounted"] = podman.mounts()
    return seen


@pytest.fixture
def podmen():
    made: list[Podman] = []
    yield lambda program: made.append(Podman(program)) or made[-1]
    left = [point for podman in made for point in podman.close()]
    assert not left, f"left mounted: {left}"


def test_podman_with_pyunion_overlayfs_as_fuse_overlayfs(podmen, busybox_tar):
    ours = scenario(podmen(PYUNION_OVERLAYFS), busybox_tar)
    theirs = scenario(podmen(FUSE_OVERLAYFS), busybox_tar)
    assert ours["root"] == ["fuse.pyunion", "pyunion-overlayfs"]
    assert theirs["root"] == ["fuse.fuse-overlayfs", "fuse-overlayfs"]
    assert ours["mounted_fstype"] == "fuse.pyunion"
    assert ours["run"] == ["data", "x", "more", "b.txt", "c.txt", "mode.txt"]
    for step in ("run", "committed", "built"):
        assert ours[step] == theirs[step], step
    assert "doomed" not in ours["committed"] and "600" in ours["committed"]
    assert ours["built"] == "built\n.\n..\n"
    assert not differences(ours["tree"], theirs["tree"])
    assert ours["left_mounted"] == theirs["left_mounted"] == []
