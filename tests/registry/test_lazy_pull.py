"""``pull --lazy`` of eStargz images (pushed by ``push --format estargz``), through a loopback
proxy in front of the registry: only the TOCs at pull, each file on its first read through the
mount, chunks checked before they are served, EIO (not a hang) from a silent registry, and an
ordinary pull where the registry ignores Range."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounts
from tests.registry.conftest import (
    Cli,
    ImageSet,
    Registry,
    assert_same_rootfs,
    big_content,
    mounted_image,
    rootfs_view,
    wait_for,
)
from tests.registry.proxy import MisbehavingProxy
from unionfs.fs.lazy import MARK

APP = "lazy-app:2.0"
BIG = "lazy-big:1.0"


@pytest.fixture(scope="module")
def estargz_pushed(images: ImageSet, shared_registry: Registry, session_env) -> Registry:
    cli = Cli(session_env)
    cli.run(images.store, "push", "-q", "--format", "estargz", "--image", "app:2.0",
            shared_registry.ref(APP))
    cli.run(images.store, "push", "-q", "--format", "estargz", "--image", "big:1.0",
            shared_registry.ref(BIG))
    return shared_registry


@pytest.fixture
def proxy(estargz_pushed: Registry) -> Iterator[MisbehavingProxy]:
    with MisbehavingProxy(estargz_pushed.port) as running:
        yield running


def marked_files(store: Path) -> dict[str, str]:
    """Placeholders waiting for their data, in every layer of the store: {path: TOC name}."""
    found = {}
    for root, _, names in os.walk(store / "layers"):
        for name in names:
            path = os.path.join(root, name)
            try:
                found[path] = os.getxattr(path, MARK, follow_symlinks=False).decode()
            except OSError:
                pass
    return found


def unmount(cli: Cli, store: Path, mnt: Path) -> None:
    cli.run(store, "umount-image", mnt, check=False)
    if mounts.is_mounted(mnt):  # the last resort
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def blob_gets_without_range(proxy: MisbehavingProxy) -> list[str]:
    return [path for method, path, wanted, _ in proxy.requests
            if method == "GET" and "/blobs/" in path and wanted is None]


def test_lazy_pull_fetches_tocs_then_each_file_on_first_read(
        cli: Cli, proxy: MisbehavingProxy, estargz_pushed: Registry, store: Path,
        tmp_path: Path):
    ref = proxy.ref(APP)
    result = cli.pull(store, ref, "--lazy")
    assert "Pulled lazily" in result.stdout + result.stderr
    config_gets = blob_gets_without_range(proxy)
    assert len(config_gets) == 1  # the config; every layer byte came by Range
    assert all(status == 206 for *_, status in proxy.range_requests())
    marked = marked_files(store)
    assert any(name == "opt/app/run" for name in marked.values())
    assert any(name == "bin/busybox" for name in marked.values())
    placeholder = next(p for p, n in marked.items() if n == "bin/busybox")
    assert os.stat(placeholder).st_blocks == 0 and os.stat(placeholder).st_size > 100_000

    full = tmp_path / "full-store"
    cli.pull(full, estargz_pushed.ref(APP))
    with mounted_image(cli, full, estargz_pushed.ref(APP), tmp_path / "full") as mnt:
        expected = rootfs_view(mnt)
    before = len(proxy.range_requests())
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "opt/app/run").read_bytes() == b"#!/bin/sh\necho app\necho two\n"
        assert len(proxy.range_requests()) == before + 1  # one request for the file
        assert "opt/app/run" not in marked_files(store).values()
        assert "bin/busybox" in marked_files(store).values()
        df = cli.run(store, "df", "-v").stdout
        assert df.count("(lazy)") == 2 and " of " in df
        assert_same_rootfs(rootfs_view(mnt), expected, "the lazy mount's and a full pull's "
                                                       "rootfs")
    assert marked_files(store) == {}
    assert blob_gets_without_range(proxy) == config_gets
    with mounted_image(cli, store, ref, tmp_path / "again") as mnt:  # now all local
        count = len(proxy.requests)
        assert_same_rootfs(rootfs_view(mnt), expected, "the second lazy mount")
        assert len(proxy.requests) == count


def test_large_file_arrives_chunk_by_chunk_verified(cli: Cli, proxy: MisbehavingProxy,
                                                    store: Path, tmp_path: Path):
    ref = proxy.ref(BIG)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(store, "mount-image", "--lazy", ref, mnt)  # pulls lazily: the store lacks it
    try:
        assert len(blob_gets_without_range(proxy)) == 1  # the config
        data = (mnt / "opt/big.bin").read_bytes()
    finally:
        unmount(cli, store, mnt)
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_content()).digest()


def test_corrupt_chunk_is_never_served(cli: Cli, proxy: MisbehavingProxy, store: Path,
                                       tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")
    placeholder = next(p for p, n in marked_files(store).items() if n == "etc/passwd")
    proxy.mode = "corrupt"
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        with pytest.raises(OSError) as failure:
            (mnt / "etc/passwd").read_bytes()
        assert failure.value.errno == errno.EIO
        assert Path(placeholder).read_bytes() == b"\0" * os.path.getsize(placeholder)
        assert os.getxattr(placeholder, MARK) == b"etc/passwd"
        proxy.mode = "pass"
        assert (mnt / "etc/passwd").read_text().startswith("root:x:0:0:")


@pytest.mark.parametrize("mode", ["stall", "drop"])
def test_silent_registry_fails_a_read_with_eio_after_the_timeout(
        cli: Cli, proxy: MisbehavingProxy, store: Path, tmp_path: Path, mode: str):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")
    proxy.mode = mode
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(store, "mount-image", "--lazy-timeout", "3", ref, mnt)
    try:
        with pytest.raises(OSError) as failure:
            (mnt / "etc/group").read_bytes()
        assert failure.value.errno == errno.EIO
        assert (mnt / "etc/group").stat().st_size > 0  # metadata is all local
    finally:
        unmount(cli, store, mnt)


def test_registry_ignoring_range_gets_an_ordinary_pull(cli: Cli, proxy: MisbehavingProxy,
                                                       store: Path, tmp_path: Path):
    proxy.mode = "ignore_range"
    ref = proxy.ref(APP)
    result = cli.pull(store, ref, "--lazy")
    lines = [line for line in result.stderr.splitlines() if "Range" in line]
    assert len(lines) == 1 and "not lazily" in lines[0]
    assert marked_files(store) == {}
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "opt/app/data/two.txt").read_bytes() == b"two\n"


def test_save_and_push_refuse_an_incomplete_lazy_image(cli: Cli, proxy: MisbehavingProxy,
                                                       store: Path, tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")
    for args in (("save", "--format", "oci-dir", "-o", tmp_path / "out", ref),
                 ("push", "--image", ref, proxy.ref("elsewhere:1"))):
        result = cli.run(store, *args, check=False)
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith("pyunion: error:")
        assert "lazily" in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_lazy_starts_a_container_from_a_lazily_pulled_image(cli: Cli,
                                                                proxy: MisbehavingProxy,
                                                                store: Path):
    ref = proxy.ref(APP)
    result = cli.run(store, "run", "--rm", "--lazy", "-q", ref, "/opt/app/run")
    assert result.stdout == "app\ntwo\n"
    waiting = set(marked_files(store).values())
    assert "bin/busybox" not in waiting and "opt/app/run" not in waiting  # used: fetched
    assert "etc/app.conf" in waiting  # never read: still in the registry only


def test_an_ordinary_pull_completes_a_lazy_image(cli: Cli, proxy: MisbehavingProxy,
                                                 store: Path, tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        (mnt / "etc/passwd").read_bytes()  # one file fetched lazily, the rest not
    result = cli.pull(store, ref)
    assert "up to date" not in result.stdout
    assert marked_files(store) == {}
    assert not list((store / "lazy").iterdir())
    cli.run(store, "save", "--format", "oci-dir", "-o", tmp_path / "saved", ref)
    cli.tool("umoci", "unpack", "--image", f"{tmp_path / 'saved'}:2.0", tmp_path / "bundle")
    with mounted_image(cli, store, ref, tmp_path / "mnt2") as mnt:
        assert_same_rootfs(rootfs_view(mnt), rootfs_view(tmp_path / "bundle" / "rootfs"),
                           "the completed layers' and umoci's rootfs")


def test_removing_a_lazy_image_forgets_its_lazy_records(cli: Cli, proxy: MisbehavingProxy,
                                                        store: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")
    assert len(list((store / "lazy").iterdir())) == 2
    cli.run(store, "rmi", ref)
    assert list((store / "lazy").iterdir()) == []
    assert list((store / "layers").iterdir()) == []


def test_a_second_lazy_image_shares_the_lazy_base_layer(cli: Cli, proxy: MisbehavingProxy,
                                                        store: Path):
    cli.pull(store, proxy.ref(APP), "--lazy")
    waiting = marked_files(store)
    result = cli.pull(store, proxy.ref(BIG), "--lazy")
    assert "Already exists" in result.stdout + result.stderr
    assert len(blob_gets_without_range(proxy)) == 2  # the two configs
    assert set(waiting) <= set(marked_files(store))


def test_prefetched_files_arrive_before_their_first_use(cli: Cli, images: ImageSet,
                                                       estargz_pushed: Registry,
                                                       proxy: MisbehavingProxy, store: Path,
                                                       tmp_path: Path):
    cli.run(images.store, "push", "-q", "--format", "estargz", "--prefetch", "/etc/app.conf",
            "--image", "app:2.0", estargz_pushed.ref("lazy-prefetch:2.0"))
    ref = proxy.ref("lazy-prefetch:2.0")
    cli.pull(store, ref, "--lazy")
    assert "etc/app.conf" in marked_files(store).values()
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "opt/app/data/two.txt").read_bytes() == b"two\n"  # the layer's first use
        wait_for(lambda: "etc/app.conf" not in marked_files(store).values(), 30,
                 interval=0.05, what="the prefetch of etc/app.conf")
        assert (mnt / "etc/app.conf").read_bytes() == b"version=2\n"


ROOTLESS_SESSION = """
set -e
{{p}} pull -q --lazy {ref} >/dev/null
mkdir mnt
{{p}} mount-image {ref} mnt
stat -c 'owner %n %u %g %a' mnt/etc/secret
cat mnt/etc/passwd
{{p}} umount-image mnt
{{p}} run --rm {ref} cat /etc/secret /etc/app.conf
"""


def test_an_ordinary_user_pulls_lazily(proxy: MisbehavingProxy) -> None:
    from tests.cli_helpers import NOBODY, public_dir
    from tests.test_rootless_images import WITH_USER_DEVICES, run_session

    with public_dir() as pub:
        os.chown(pub, NOBODY, NOBODY)
        out = run_session(pub, WITH_USER_DEVICES, ROOTLESS_SESSION.format(ref=proxy.ref(APP)))
        lines = out.splitlines()
        assert "owner mnt/etc/secret 0 42 640" in lines  # as the image has it
        assert "s3cret" in lines and "version=2" in lines and "root:x:0:0:root:/root:/bin/sh" \
            in lines
        assert any(wanted is not None for _, _, wanted, _ in proxy.requests)


def test_a_corrupt_toc_fails_the_pull_and_changes_nothing(cli: Cli, proxy: MisbehavingProxy,
                                                         store: Path):
    proxy.mode = "corrupt"
    result = cli.pull(store, proxy.ref(APP), "--lazy", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("pyunion: error:")
    assert "eStargz" in result.stderr or "TOC" in result.stderr
    assert cli.image_ids(store) == []
    assert not (store / "layers").exists() or list((store / "layers").iterdir()) == []
