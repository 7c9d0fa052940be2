"""``pull --lazy`` of eStargz images (pushed by ``push --format estargz``), through a loopback
proxy in front of the registry: only the TOCs at pull, each file on its first read through the
mount, chunks checked before they are served, EIO (not a hang) from a silent registry, and an
ordinary pull where the registry ignores Range."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import tarfile
import time
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
    expect_error,
    mounted_image,
    rootfs_view,
    store_state,
    wait_for,
)
from tests.registry.proxy import MisbehavingProxy
from unionfs.fs.lazy import MARK
from unionfs.image.archive import estargz
from unionfs.image.registry.pull import TOC_TAIL_BYTES

APP = "lazy-app:2.0"
BIG = "lazy-big:1.0"
LAZY = ("--lazy", "--lazy-rate", "0")  # no background fetch: the mounts fetch on demand only


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
    result = cli.pull(store, ref, *LAZY)
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
    cli.run(store, "mount-image", "--lazy", "--lazy-rate", "0", ref, mnt)  # pulls lazily
    try:
        assert len(blob_gets_without_range(proxy)) == 1  # the config
        data = (mnt / "opt/big.bin").read_bytes()
    finally:
        unmount(cli, store, mnt)
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_content()).digest()


def test_corrupt_chunk_is_never_served(cli: Cli, proxy: MisbehavingProxy, store: Path,
                                       tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, *LAZY)
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
    cli.pull(store, ref, *LAZY)
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
    result = cli.pull(store, ref, *LAZY)
    lines = [line for line in result.stderr.splitlines() if "Range" in line]
    assert len(lines) == 1 and "not lazily" in lines[0]
    assert marked_files(store) == {}
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "opt/app/data/two.txt").read_bytes() == b"two\n"


def test_save_and_push_refuse_an_incomplete_lazy_image(cli: Cli, proxy: MisbehavingProxy,
                                                       store: Path, tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, *LAZY)
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
    cli.pull(store, ref, *LAZY)  # (no background fetch: what the run used is all there is)
    # the host's network: root's default bridge would change the host's own (see
    # tests/container/conftest.py's TEST_NETWORK)
    result = cli.run(store, "run", "--rm", "--lazy", "-q", "--network", "host", ref,
                     "/opt/app/run")
    assert result.stdout == "app\ntwo\n"
    waiting = set(marked_files(store).values())
    assert "bin/busybox" not in waiting and "opt/app/run" not in waiting  # used: fetched
    assert "etc/app.conf" in waiting  # never read: still in the registry only


def test_an_ordinary_pull_completes_a_lazy_image(cli: Cli, proxy: MisbehavingProxy,
                                                 store: Path, tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, *LAZY)
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
    cli.pull(store, ref, *LAZY)
    assert len(list((store / "lazy").iterdir())) == 2
    cli.run(store, "rmi", ref)
    assert list((store / "lazy").iterdir()) == []
    assert list((store / "layers").iterdir()) == []


def test_a_second_lazy_image_shares_the_lazy_base_layer(cli: Cli, proxy: MisbehavingProxy,
                                                        store: Path):
    cli.pull(store, proxy.ref(APP), *LAZY)
    waiting = marked_files(store)
    result = cli.pull(store, proxy.ref(BIG), *LAZY)
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
    cli.pull(store, ref, *LAZY)
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
{{p}} mount-image --lazy-rate 1G {ref} mnt
for i in $(seq 300); do {{p}} images | grep -q '(lazy ' || break; sleep 0.1; done
{{p}} umount-image mnt
{{p}} images | grep -q '(lazy ' && echo still lazy
{{p}} save --format oci-dir -o saved {ref} && echo saved
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
        assert "still lazy" not in lines and "saved" in lines  # completed by the daemon


def toc_start(registry: Registry, blob_path: str) -> tuple[int, int]:
    """(blob size, the offset its eStargz footer gives the TOC) of a blob ``/v2/.../blobs/D``
    the registry stores: read from its storage, not through the pull."""
    data = registry.blob_data(blob_path.rsplit("/", 1)[1]).read_bytes()
    return len(data), estargz.parse_footer(data[-estargz.FOOTER_SIZE:])


def test_footer_and_toc_come_in_one_request(cli: Cli, proxy: MisbehavingProxy,
                                            estargz_pushed: Registry, store: Path):
    cli.pull(store, proxy.ref(APP), *LAZY)
    ranges = proxy.range_requests()
    assert len(ranges) == 2 == len({path for _, path, _, _ in ranges})  # one for each layer
    for _, path, wanted, _ in ranges:
        size, toc = toc_start(estargz_pushed, path)
        first = max(0, size - TOC_TAIL_BYTES)
        assert toc >= first and wanted == f"bytes={first}-{size - 1}"


def test_a_toc_larger_than_the_tail_takes_a_second_request(
        cli: Cli, proxy: MisbehavingProxy, estargz_pushed: Registry, store: Path,
        tmp_path: Path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "many").mkdir(parents=True)
    for i in range(2000):  # some 50 compressed bytes of TOC each
        (rootfs / "many" / f"f{i:05d}").write_text(f"file {i}\n")
    source = tmp_path / "source"
    cli.run(source, "import", "-q", rootfs, "many:1")
    cli.run(source, "push", "-q", "--format", "estargz", "--image", "many:1",
            estargz_pushed.ref("lazy-many:1"))
    cli.pull(store, proxy.ref("lazy-many:1"), *LAZY)
    (_, path, tail, _), (_, again, rest, _) = proxy.range_requests()
    size, toc = toc_start(estargz_pushed, path)
    first = size - TOC_TAIL_BYTES
    assert toc < first  # the precondition: the TOC starts before the tail
    assert (again, tail, rest) == (path, f"bytes={first}-{size - 1}", f"bytes={toc}-{first - 1}")
    assert "many/f01999" in marked_files(store).values()
    with mounted_image(cli, store, proxy.ref("lazy-many:1"), tmp_path / "mnt") as mnt:
        assert (mnt / "many/f01999").read_text() == "file 1999\n"
        assert len(os.listdir(mnt / "many")) == 2000


@pytest.mark.parametrize("where", [-1, -estargz.FOOTER_SIZE - 9], ids=["footer", "toc"])
def test_a_corrupt_tail_fails_the_pull_and_changes_nothing(
        cli: Cli, proxy: MisbehavingProxy, store: Path, where: int):
    """A byte of the tail's answer flipped: the footer's last (its gzip trailer), or the
    last of the TOC's compressed data (before its gzip trailer)."""
    before = store_state(cli, store)
    proxy.mode, proxy.corrupt_at = "corrupt", where
    result = cli.pull(store, proxy.ref(APP), "--lazy", check=False)
    expect_error(result, "eStargz|TOC")
    assert len(proxy.range_requests()) == 1  # the first layer's tail: refused at once
    assert store_state(cli, store) == before
    assert not (store / "layers").exists() or list((store / "layers").iterdir()) == []
    assert not (store / "lazy").exists() or list((store / "lazy").iterdir()) == []


def layer_dirs(store: Path, ref: str) -> list[Path]:
    """The image's layer directories, top-most first (as overlayfs's lowerdir)."""
    with sqlite3.connect(store / "db.sqlite") as db:
        image = db.execute("SELECT image_id FROM tags WHERE name = ?", (ref,)).fetchone()[0]
        rows = db.execute("SELECT chain_id FROM image_layers WHERE image_id = ? "
                          "ORDER BY position DESC", (image,)).fetchall()
    return [store / "layers" / chain[7:] for chain, in rows]


def mount_pid(store: Path, mnt: Path) -> int:
    with sqlite3.connect(store / "db.sqlite") as db:
        return db.execute("SELECT pid FROM mounts WHERE mountpoint = ?",
                          (os.path.realpath(mnt),)).fetchone()[0]


def partial_download(store: Path) -> int:
    """Bytes of the background download in the store so far (0 if none)."""
    found = list((store / "downloads").glob("*.partial")) if (store / "downloads").exists() \
        else []
    return max((p.stat().st_size for p in found), default=0)


def test_the_rest_follows_in_the_background_and_the_layer_becomes_ordinary(
        cli: Cli, proxy: MisbehavingProxy, estargz_pushed: Registry, store: Path,
        tmp_path: Path):
    ref = proxy.ref(APP)
    cli.pull(store, ref, "--lazy")  # the default rate
    assert "(lazy " in cli.run(store, "images").stdout
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        wait_for(lambda: not list((store / "lazy").iterdir()), 60, interval=0.05,
                 what="the background completion of the lazy layers")
        assert marked_files(store) == {}
        assert "(lazy)" not in cli.run(store, "df", "-v").stdout
        assert "(lazy " not in cli.run(store, "images").stdout
        view = rootfs_view(mnt)
    for layer in layer_dirs(store, ref):
        assert MARK not in os.listxattr(layer)
    whole_gets = [p for p in blob_gets_without_range(proxy)]
    assert len(whole_gets) == 3  # the config, then each layer's blob once

    full = tmp_path / "full-store"
    cli.pull(full, estargz_pushed.ref(APP))
    with mounted_image(cli, full, estargz_pushed.ref(APP), tmp_path / "full") as mnt:
        expected = rootfs_view(mnt)
    assert_same_rootfs(view, expected, "the completed lazy mount's and a full pull's rootfs")
    (tmp_path / "ovl").mkdir()
    with mounts.overlay_mounted(layer_dirs(store, ref), None, None, tmp_path / "ovl") as ovl:
        assert_same_rootfs(rootfs_view(ovl), expected,
                           "kernel overlayfs over the completed layers and a full pull")
    cli.run(store, "save", "--format", "oci-dir", "-o", tmp_path / "saved", ref)
    cli.run(store, "push", "--image", ref, estargz_pushed.ref("lazy-completed:1"))
    assert "Image is up to date" in cli.pull(store, ref).stdout


def test_the_background_fetch_keeps_its_rate_ends_with_the_mount_and_survives_a_crash(
        cli: Cli, proxy: MisbehavingProxy, store: Path, tmp_path: Path):
    ref = proxy.ref(BIG)
    rate = 1 << 20
    cli.pull(store, ref, *LAZY)
    waiting = marked_files(store)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for ending in ("umount", "crash"):
        cli.run(store, "mount-image", "--lazy-rate", "1M", ref, mnt)
        try:
            pid = mount_pid(store, mnt)
            before = partial_download(store)
            wait_for(lambda b=before: partial_download(store) > b, 30, interval=0.05,
                     what="the background download")
            start, first = time.monotonic(), partial_download(store)
            time.sleep(2)
            grown = partial_download(store) - first
            assert 0 < grown <= rate * (time.monotonic() - start) + (256 << 10)
            if ending == "crash":
                os.kill(pid, signal.SIGKILL)
            else:
                cli.run(store, "umount-image", mnt)
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), 30, interval=0.05,
                     what="the mount daemon's end")
        finally:
            unmount(cli, store, mnt)
        assert marked_files(store) == waiting  # still a valid lazy layer, nothing changed
        assert len(list((store / "lazy").iterdir())) == 2
    with mounted_image(cli, store, ref, tmp_path / "again") as again:  # (its pull's rate 0)
        data = (again / "opt/big.bin").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_content()).digest()
    kept = partial_download(store)
    cli.run(store, "mount-image", "--lazy-rate", "1G", ref, mnt)  # resumed, at full speed
    try:
        wait_for(lambda: not list((store / "lazy").iterdir()), 60, interval=0.05,
                 what="the background completion")
    finally:
        unmount(cli, store, mnt)
    assert any(wanted == f"bytes={kept}-" for _, _, wanted, _ in proxy.requests)
    assert marked_files(store) == {} and partial_download(store) == 0
    assert "Image is up to date" in cli.pull(store, ref).stdout


def _odd_layer() -> bytes:
    """A gzip layer tar with what a layer directory must get right: a whiteout, an opaque
    directory, implicit parents (with and without a lower directory), xattrs (one not UTF-8),
    a set-uid file and a hard link to it, a fifo, a device, long and non-ASCII names."""
    out = io.BytesIO()

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mtime, info.mode = kind, len(data), 1_600_000_000, 0o644
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        add("etc/", tarfile.DIRTYPE, mode=0o755, mtime=1_500_000_000)
        add("etc/.wh.secret")
        add("home/.wh..wh..opq")
        add("home/new.txt", data=b"new\n", uid=1000, gid=1000)
        add("opt/odd/", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8, pax_headers={
            "SCHILY.xattr.user.note": "hello",
            "SCHILY.xattr.user.bin": b"\xff\xfe".decode("utf-8", "surrogateescape")})
        add("opt/odd/setuid", data=b"x" * 1000, mode=0o4755,
            pax_headers={"SCHILY.xattr.user.file": "v"})
        add("opt/odd/hard", tarfile.LNKTYPE, linkname="opt/odd/setuid")
        add("opt/odd/fifo", tarfile.FIFOTYPE, mode=0o600)
        add("opt/odd/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("opt/odd/" + "d" * 120, data=b"long name\n")
        add("opt/odd/naïve-é.txt", data=b"accents\n", mtime=1_234_567_890)
        add("opt/odd/empty")
        add("opt/odd/link", tarfile.SYMTYPE, linkname="setuid")
        add("var/deep/er/file", data=b"deep\n", mode=0o600)
    return out.getvalue()


def _odd_image(cli: Cli, images: ImageSet, registry: Registry, layout: Path) -> str:
    """base:1.0 plus ``_odd_layer``, pushed to ``registry`` as ``lazy-odd:1`` (plain gzip)."""
    from tests.registry.test_interop import OCI_INDEX, OCI_MANIFEST, _blob

    cli.run(images.store, "save", "--format", "oci-dir", "-o", layout, "base:1.0")
    blobs = layout / "blobs" / "sha256"
    base = json.loads((blobs / images["base:1.0"].manifest[7:]).read_bytes())
    config = json.loads((blobs / base["config"]["digest"][7:]).read_bytes())
    layer = _odd_layer()
    config["rootfs"]["diff_ids"].append(
        "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest())
    config.pop("history", None)
    base["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           **_blob(layout, layer)})
    base["config"] = {"mediaType": base["config"]["mediaType"],
                      **_blob(layout, json.dumps(config).encode())}
    descriptor = {"mediaType": OCI_MANIFEST, **_blob(layout, json.dumps(base).encode()),
                  "annotations": {"org.opencontainers.image.ref.name": "odd"}}
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}))
    cli.skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:odd",
               f"docker://{registry.ref('lazy-odd-plain:1')}")
    source = layout.parent / "source-store"
    cli.pull(source, registry.ref("lazy-odd-plain:1"))
    cli.run(source, "push", "-q", "--format", "estargz", "--image",
            registry.ref("lazy-odd-plain:1"), registry.ref("lazy-odd:1"))
    return "lazy-odd:1"


def layer_tree(root: Path, made_after: int) -> dict[str, tuple]:
    """Everything of a layer directory: each entry's type, mode, owner, size, mtime (but
    the time of the unpacking, ``made_after`` or later, that a whiteout or a directory no
    layer names gets), device, link target, xattrs (but the lazy mark) and content (None for
    a placeholder), and which entries share an inode."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for top, dirs, names in os.walk(root):
        for name in ["", *dirs, *names] if top == str(root) else [*dirs, *names]:
            path = os.path.join(top, name) if name else top
            st = os.lstat(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False) if k != MARK}
            marked = MARK in os.listxattr(path, follow_symlinks=False)
            content = "placeholder" if marked else None
            if stat.S_ISREG(st.st_mode) and not marked:
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            first = inodes.setdefault(st.st_ino, os.path.relpath(path, root))
            tree[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size,
                st.st_mtime_ns if st.st_mtime_ns < made_after else "now", st.st_rdev,
                st.st_nlink, sorted(xattrs.items()), content, first)
    return tree


def test_a_lazy_layer_directory_is_the_one_a_full_pull_makes(
        cli: Cli, images: ImageSet, estargz_pushed: Registry, proxy: MisbehavingProxy,
        store: Path, tmp_path: Path):
    name = _odd_image(cli, images, estargz_pushed, tmp_path / "layout")
    made_after = time.time_ns()
    cli.pull(store, proxy.ref(name), *LAZY)
    full = tmp_path / "full-store"
    cli.pull(full, estargz_pushed.ref(name))
    lazy_layers = layer_dirs(store, proxy.ref(name))
    full_layers = layer_dirs(full, estargz_pushed.ref(name))
    assert [p.name for p in lazy_layers] == [p.name for p in full_layers]
    marked = marked_files(store)
    assert any(n == "opt/odd/setuid" for n in marked.values())
    for lazy, whole in zip(lazy_layers, full_layers, strict=True):
        a, b = layer_tree(lazy, made_after), layer_tree(whole, made_after)
        assert sorted(a) == sorted(b)
        different = {path: [(x, y) for x, y in zip(a[path], b[path], strict=True) if x != y]
                     for path in a if a[path] != b[path]
                     and a[path][8] != "placeholder"}  # (compared below)
        assert {path: (*a[path][:8], a[path][9]) for path in a if a[path][8] == "placeholder"}\
            == {path: (*b[path][:8], b[path][9]) for path in a if a[path][8] == "placeholder"}
        assert different == {}
    odd = layer_tree(lazy_layers[0], made_after)
    assert stat.S_ISCHR(odd["etc/secret"][0]) and odd["opt/odd/hard"][-1] == "opt/odd/setuid"
    assert ("user.bin", b"\xff\xfe") in odd["opt/odd"][7]
    with mounted_image(cli, store, proxy.ref(name), tmp_path / "mnt") as mnt:
        assert (mnt / "opt/odd/hard").read_bytes() == b"x" * 1000
        assert not (mnt / "etc/secret").exists() and os.listdir(mnt / "home") == ["new.txt"]


def test_prefetch_from_puts_the_files_a_command_opens_first(
        cli: Cli, images: ImageSet, estargz_pushed: Registry, proxy: MisbehavingProxy,
        store: Path, tmp_path: Path):
    command = "cat /etc/app.conf /opt/app/data/two.txt >/dev/null"
    cli.run(images.store, "push", "-q", "--format", "estargz", "--prefetch-from", command,
            "--image", "app:2.0", estargz_pushed.ref("lazy-prefetch-from:2.0"))
    assert cli.run(images.store, "ps", "-a", "-q").stdout.strip() == ""  # (removed)
    ref = proxy.ref("lazy-prefetch-from:2.0")
    cli.pull(store, ref, *LAZY)
    first = set()
    for record in (store / "lazy").iterdir():  # each layer's files before its landmark
        first |= set(json.loads(record.read_text())["prefetch"])
    assert {"etc/app.conf", "opt/app/data/two.txt", "bin/busybox"} <= first  # (sh, cat)
    assert "etc/secret" not in first and "opt/app/run" not in first  # never opened
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        wait_for(lambda: not {"etc/app.conf", "opt/app/data/two.txt"}
                 & set(marked_files(store).values()), 30, interval=0.05,
                 what="the prefetch of the files the command opened")
        assert (mnt / "etc/app.conf").read_bytes() == b"version=2\n"


def test_an_ordinary_pull_is_not_held_up_by_a_slow_background_fetch(
        cli: Cli, proxy: MisbehavingProxy, store: Path, tmp_path: Path):
    ref = proxy.ref(BIG)
    cli.pull(store, ref, *LAZY)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(store, "mount-image", "--lazy-rate", "256k", ref, mnt)  # 50 MiB: minutes
    try:
        wait_for(lambda: partial_download(store) > 0, 30, interval=0.05,
                 what="the background download")
        assert "Completed" in cli.pull(store, ref).stderr  # at full speed, on its own
        assert marked_files(store) == {} and not list((store / "lazy").iterdir())
        wait_for(lambda: partial_download(store) == 0, 30, interval=0.05,
                 what="the background download to stop and go")
        assert hashlib.sha256((mnt / "opt/big.bin").read_bytes()).digest() == \
            hashlib.sha256(big_content()).digest()
    finally:
        unmount(cli, store, mnt)


def early_ranges(proxy: MisbehavingProxy, layers: int) -> list[str]:
    """The Range requests after the footers and TOCs of ``layers`` lazy layers (one request
    each: ``test_footer_and_toc_come_in_one_request``)."""
    return [wanted for _, _, wanted, _ in proxy.range_requests()[layers:] if wanted]


def test_create_lazy_fetches_the_files_its_container_opens_first_with_the_tocs(
        cli: Cli, proxy: MisbehavingProxy, estargz_pushed: Registry, store: Path,
        tmp_path: Path):
    ref = proxy.ref(APP)
    full = tmp_path / "full-store"
    cli.pull(full, estargz_pushed.ref(APP))
    with mounted_image(cli, full, estargz_pushed.ref(APP), tmp_path / "full") as mnt:
        expected = {name: (mnt / name).read_bytes()
                    for name in ("bin/busybox", "etc/passwd", "etc/group", "opt/app/run")}
    # sh: found in the image's PATH, /bin/sh -> busybox; /etc/passwd and /etc/group: runc's
    cli.run(store, "create", "--lazy", "--name", "c1", ref, "sh", "-c", "cat /etc/app.conf")
    waiting = set(marked_files(store).values())
    assert {"bin/busybox", "etc/passwd", "etc/group"}.isdisjoint(waiting)
    assert {"etc/app.conf", "opt/app/run", "etc/secret"} <= waiting  # not the program
    for layer in layer_dirs(store, ref):
        for name in ("bin/busybox", "etc/passwd", "etc/group"):
            if (layer / name).is_file() and not os.path.islink(layer / name):
                assert (layer / name).read_bytes() == expected[name]
    ranges = early_ranges(proxy, 2)
    assert 1 <= len(ranges) < 3  # the three files: neighbours in the blob, merged
    before = len(proxy.range_requests())
    result = cli.run(store, "start", "-a", "c1")
    assert result.stdout == "version=2\n"
    assert len(proxy.range_requests()) == before + 1  # etc/app.conf, opened by the command
    cli.run(store, "rm", "c1")

    # a program named by path, a corrupt answer: that file is left to its first open
    proxy.mode, proxy.spare = "corrupt", 2  # the footers and TOCs of the two layers pass
    other = tmp_path / "other-store"
    cli.run(other, "create", "--lazy", "--name", "c2", ref, "/opt/app/run")
    waiting = set(marked_files(other).values())
    served = {"bin/busybox", "etc/passwd", "etc/group", "opt/app/run"} - waiting
    assert len(served) < 4  # the first file of each answer failed its digest
    for layer in layer_dirs(other, ref):
        for name in served:
            if (layer / name).is_file() and not os.path.islink(layer / name):
                assert (layer / name).read_bytes() == expected[name]
    for path, name in marked_files(other).items():
        assert Path(path).read_bytes() == b"\0" * os.path.getsize(path), name
    proxy.mode = "pass"
    assert cli.run(other, "start", "-a", "c2").stdout == "app\ntwo\n"
    cli.run(other, "rm", "c2")


def test_run_lazy_fetches_a_dynamic_programs_loader_and_libraries_early(
        cli: Cli, proxy: MisbehavingProxy, estargz_pushed: Registry, store: Path,
        tmp_path: Path):
    program = Path(shutil.which("true") or "/bin/true").resolve()  # coreutils: dynamic
    ldd = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    libraries = re.findall(r"=> (/\S+)", ldd)
    loader = re.findall(r"^\s*(/\S+)\s+\(0x", ldd, re.MULTILINE)
    assert libraries and loader, ldd
    rootfs = tmp_path / "rootfs"
    for path in [str(program), *libraries, *loader]:  # each in a real directory
        (rootfs / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, rootfs / path.lstrip("/"))
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/unused").write_text("never opened\n")
    source = tmp_path / "source"
    cli.run(source, "import", "-q", rootfs, "dynamic:1")
    cli.run(source, "push", "-q", "--format", "estargz", "--image", "dynamic:1",
            estargz_pushed.ref("lazy-dynamic:1"))

    ref = proxy.ref("lazy-dynamic:1")
    cli.run(store, "create", "--lazy", "--name", "d", ref, str(program))
    waiting = set(marked_files(store).values())
    wanted = {p.lstrip("/") for p in [str(program), *libraries, *loader, "/etc/passwd"]}
    assert wanted.isdisjoint(waiting) and waiting == {"etc/unused"}
    before = len(proxy.range_requests())
    cli.run(store, "start", "-a", "d")  # (exit status 0)
    assert len(proxy.range_requests()) == before  # all it opened had come with the TOCs
    cli.run(store, "rm", "d")
