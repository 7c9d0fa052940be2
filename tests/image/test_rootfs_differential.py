"""The merged rootfs of a loaded image equals what ``umoci unpack`` makes of the same image.

Compared: names, types, modes, owners, sizes, contents, link targets, user xattrs (without
user.overlay.*), hard-link groups, nanosecond mtimes of everything but symlinks. Seen through
``pyunion mount-image`` and through kernel overlayfs mounted straight over the store's layer
dirs (``inspect`` LayerDirs, top-most first): root stores keep layers in the kernel's form.
The app image, loaded from every archive form, is compared the same way in test_load_formats.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
import xattr

from tests import mounts
from tests.image.conftest import (
    assert_same_rootfs,
    inspect_one,
    load,
    mounted_image,
    run_pyunion,
)
from tests.image.imagebuild import NAMES


@pytest.mark.parametrize("tag", ["base", "tools", "quirks", "arm64"])
def test_mounted_rootfs_equals_umoci_unpack(images, store, mnt, tag):
    opts = ["--platform", "linux/arm64"] if tag == "arm64" else []
    source = images.multi_platform() if tag == "arm64" else images.package(tag, "oci-dir")
    load(store, source, *opts)
    reference = images.reference_rootfs(tag)
    with mounted_image(store, NAMES[tag], mnt):
        assert_same_rootfs(mnt, reference, f"pyunion mount-image of {tag} vs umoci unpack")
        got, want = os.lstat(mnt), os.lstat(reference)
        assert (stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid) == (
            stat.S_IMODE(want.st_mode), want.st_uid, want.st_gid), "root directory attributes"


@pytest.mark.parametrize("tag", ["app", "quirks"])
def test_kernel_overlay_over_layer_dirs(images, store, overlay, tag):
    load(store, images.package(tag, "oci-dir"))
    dirs = inspect_one(store, NAMES[tag])["LayerDirs"]
    assert len(dirs) >= 2
    merged = overlay(list(reversed(dirs)), None, None)
    assert_same_rootfs(merged, images.reference_rootfs(tag), f"kernel overlay of {tag} layers")


def test_layer_dirs_are_in_kernel_overlay_form(images, store):
    """Whiteouts are 0/0 char devices, the opaque dir has trusted.overlay.opaque=y, no .wh.*"""
    load(store, images.package("app", "oci-dir"))
    base, layer_a, layer_b = (Path(d) for d in inspect_one(store, "app:2.0")["LayerDirs"])
    for path in (layer_a / "etc/removeme", layer_a / "etc/gone"):
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), f"{path} no whiteout"
    assert xattr.getxattr(layer_b / "opt/data", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(layer_b / "opt/data")) == ["fresh", "nested"]
    for layer in (base, layer_a, layer_b):
        for dirpath, dirnames, filenames in os.walk(layer):
            leaked = [n for n in dirnames + filenames if n.startswith(".wh.")]
            assert not leaked, f"AUFS whiteout names left in {dirpath}: {leaked}"
    # a layer dir holds only that layer's changes
    assert not (layer_b / "bin").exists()
    assert (base / "bin/busybox").stat().st_size == Path("/bin/busybox").stat().st_size


def test_mount_image_is_read_only_and_runs(images, store, mnt):
    load(store, images.package("app", "oci-dir"))
    result = run_pyunion(store, "mount-image", "app:2.0", mnt, check=False)
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.realpath(result.stdout.strip()) == os.path.realpath(mnt)
        assert (mounts.mount_type(mnt) or "").startswith("fuse"), mounts.mount_type(mnt)
        assert (mnt / "etc/motd").read_text() == "welcome to app 2.0\n"
        for attempt in (lambda: (mnt / "newfile").write_text("x"),
                        lambda: (mnt / "etc/motd").write_text("x"),
                        lambda: (mnt / "etc/passwd").unlink()):
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        ran = subprocess.run(["chroot", str(mnt), "/bin/sh", "-c", "cat /etc/motd; id -u"],
                             capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "welcome to app 2.0\n0\n"
    finally:
        if mounts.is_mounted(mnt):
            run_pyunion(store, "umount-image", mnt, check=False, timeout=30)
        still = mounts.is_mounted(mnt)
        if still:
            mounts.unmount(mnt)
    assert not still, "umount-image left the mount in place"


def test_plain_umount_works(images, store, mnt):
    load(store, images.package("tools", "oci-dir"))
    run_pyunion(store, "mount-image", "tools:1.0", mnt)
    try:
        assert (mnt / "usr/bin/tool").read_text() == "#!/bin/sh\necho tool\n"
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
        assert not mounts.is_mounted(mnt)
    finally:
        if mounts.is_mounted(mnt):
            mounts.unmount(mnt)


def test_two_images_mounted_at_once(images, store, tmp_path):
    """Two mounts of images sharing the base layer are independent views."""
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    with mounted_image(store, "app:2.0", tmp_path / "m1") as m1, \
            mounted_image(store, "tools:1.0", tmp_path / "m2") as m2:
        assert (m1 / "etc/hostname").read_text() == "app\n"
        assert (m2 / "etc/hostname").read_text() == "base\n"
        assert not (m1 / "usr/bin/tool").exists() and (m2 / "usr/bin/tool").exists()
        assert (m2 / "etc/removeme").exists() and not (m1 / "etc/removeme").exists()
        assert_same_rootfs(m2, images.reference_rootfs("tools"), "tools next to app")


def test_mount_image_unknown_image(store, mnt):
    result = run_pyunion(store, "mount-image", "nosuch:1", mnt, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("pyunion: error: ")
    assert not mounts.is_mounted(mnt)
