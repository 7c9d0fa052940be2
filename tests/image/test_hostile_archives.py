"""Hostile and broken input to ``pyunion load``: refused, nothing written outside, store intact.

Every crafted image is two layers: an innocent new one (so a half-done load would leave a
layer behind) and the hostile one. Each refusal must be exit status 1 with one
``pyunion: error:`` line naming the cause; the store (files, xattrs and database rows, not the
sqlite WAL/shm or lock files) and ``images -qa`` must be unchanged, and the marker paths outside
the store (under ``outside/``) must not appear.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.image.conftest import (
    assert_store_unchanged,
    expect_error,
    image_ids,
    inspect_one,
    load,
    mounted_image,
    store_state,
)
from tests.image.imagebuild import (
    OCI_LAYER_GZIP,
    Layer,
    LayerTar,
    blob_path,
    descriptor,
    gzip_bytes,
    json_bytes,
    manifest_descriptor,
    minimal_config,
    read_blob_json,
    read_index,
    rewrite_manifest,
    write_blob,
    write_legacy_archive,
    write_oci_layout,
)

DEEP = "../" * 40  # enough to climb from any store path to /


SEED_LAYER = Layer.of(LayerTar().dir("etc").file("etc/seed", b"seed\n")
                      .file("etc/hostname", b"seed\n").bytes())
SEED_CONFIG = json_bytes(minimal_config([SEED_LAYER.diff_id]))
SEED_IDS = [hashlib.sha256(SEED_CONFIG).hexdigest()[:12]]  # images -qa of a seeded store


@pytest.fixture
def seeded(store, tmp_path) -> Path:
    """A store holding one small image, so "unchanged" covers existing content too."""
    layout = tmp_path / "seed-layout"
    write_oci_layout(layout, [SEED_LAYER], SEED_CONFIG, ref_name="seed:1")
    load(store, layout)
    return store


@pytest.fixture
def outside(tmp_path) -> Path:
    """A dir outside the store with one victim file; nothing may be created or linked here."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("secret\n")
    return path


def innocent() -> Layer:
    return Layer.of(LayerTar().dir("innocent").file("innocent/file", uuid.uuid4().bytes).bytes())


def hostile_layout(tmp_path: Path, hostile: bytes | Layer, name: str = "hostile") -> Path:
    layer = hostile if isinstance(hostile, Layer) else Layer.of(hostile)
    first = innocent()
    layout = tmp_path / name
    write_oci_layout(layout, [first, layer], minimal_config([first.diff_id, layer.diff_id]),
                     ref_name="hostile:1")
    return layout


def hostile_archive(tmp_path: Path, hostile: bytes) -> Path:
    first = innocent()
    cfg = json_bytes(minimal_config([first.diff_id, Layer.of(hostile, "none").diff_id]))
    return write_legacy_archive(tmp_path / "hostile.tar", cfg,
                                [gzip.decompress(first.blob), hostile], ["hostile:1"])


def outside_listing(outside: Path) -> list[tuple[str, int]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(outside):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found.append((os.path.relpath(full, outside), os.lstat(full).st_nlink))
    return sorted(found)


def assert_rejected(store: Path, source: Path, cause: str, outside: Path | None = None, *,
                    env: dict | None = None, opts: tuple = ()) -> str:
    ids = SEED_IDS
    before = store_state(store)
    seen_outside = outside_listing(outside) if outside else None
    result = load(store, source, *opts, env=env, check=False)
    message = expect_error(result, cause)
    if outside:
        assert outside_listing(outside) == seen_outside, "something was written outside"
        assert (outside / "victim").read_text() == "secret\n"
    assert_store_unchanged(before, store_state(store))
    assert image_ids(store, "-a") == ids
    return message


def rel(path: Path) -> str:
    return str(path).lstrip("/")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("container", ["oci-dir", "docker-archive"])
@pytest.mark.parametrize("shape", ["plain", "inside-dir"])
def test_dotdot_escape(seeded, tmp_path, outside, container, shape):
    name = DEEP + rel(outside / "dotdot-marker")
    if shape == "inside-dir":
        name = "etc/../" + name
    tar = LayerTar().dir("etc").file(name, b"escaped\n").bytes()
    source = (hostile_layout(tmp_path, tar) if container == "oci-dir"
              else hostile_archive(tmp_path, tar))
    assert_rejected(seeded, source, r"\.\.|outside|escap|unsafe|invalid|illegal|path", outside)


def test_absolute_name(seeded, tmp_path, outside):
    tar = LayerTar().file(str(outside / "absolute-marker"), b"absolute\n").bytes()
    assert_rejected(seeded, hostile_layout(tmp_path, tar),
                    r"absolute|outside|escap|unsafe|invalid|illegal|path", outside)


@pytest.mark.parametrize("shape", ["absolute-target", "relative-target", "mkdir-through",
                                   "nested-link"])
def test_write_through_planted_symlink(seeded, tmp_path, outside, shape):
    t = LayerTar().dir("x")
    if shape == "absolute-target":
        t.symlink("x/evil", str(outside)).file("x/evil/marker", b"through a link\n")
    elif shape == "relative-target":
        t.symlink("x/evil", DEEP + rel(outside)).file("x/evil/marker", b"through a link\n")
    elif shape == "mkdir-through":
        t.symlink("x/evil", str(outside)).dir("x/evil/madedir")
    else:  # a link to a link inside the layer that points out
        t.symlink("x/out", str(outside)).symlink("x/evil", "out").file("x/evil/marker", b"2\n")
    assert_rejected(seeded, hostile_layout(tmp_path, t.bytes()),
                    r"symlink|link|outside|escap|unsafe|invalid|path|not a directory|through",
                    outside)


@pytest.mark.parametrize("shape", ["dotdot", "absolute", "via-symlink"])
def test_hardlink_to_outside(seeded, tmp_path, outside, shape):
    t = LayerTar().dir("x")
    victim = outside / "victim"
    if shape == "dotdot":
        t.hardlink("x/stolen", DEEP + rel(victim))
    elif shape == "absolute":
        t.hardlink("x/stolen", str(victim))
    else:
        t.symlink("x/s", str(outside)).hardlink("x/stolen", "x/s/victim")
    assert_rejected(seeded, hostile_layout(tmp_path, t.bytes()),
                    r"link|outside|escap|unsafe|invalid|path", outside)
    assert os.stat(victim).st_nlink == 1


def test_hardlink_to_later_entry(seeded, tmp_path, outside):
    tar = LayerTar().dir("x").hardlink("x/early", "x/late").file("x/late", b"late\n").bytes()
    assert_rejected(seeded, hostile_layout(tmp_path, tar),
                    r"link|not found|missing|no such|exist|target|unknown", outside)


def test_whiteout_of_dotdot(seeded, tmp_path, outside):
    tar = LayerTar().dir("etc").file("etc/.wh..", mode=0).bytes()
    assert_rejected(seeded, hostile_layout(tmp_path, tar), r"whiteout|\.\.|invalid|path",
                    outside)


def test_char_device_lands_inside_the_layer(seeded, tmp_path, outside, mnt):
    """As root a device node is allowed: it must be created in the layer dir, nowhere else."""
    tar = LayerTar().dir("dev").chardev("dev/mynull", 1, 3).bytes()
    load(seeded, hostile_layout(tmp_path, tar))
    top = Path(inspect_one(seeded, "hostile:1")["LayerDirs"][-1])
    st = os.lstat(top / "dev/mynull")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert outside_listing(outside) == [("victim", 1)]
    devices = [os.path.join(d, n) for d, dirs, files in os.walk(seeded) for n in dirs + files
               if stat.S_ISCHR(os.lstat(os.path.join(d, n)).st_mode)
               and os.lstat(os.path.join(d, n)).st_rdev != 0]
    assert devices == [str(top / "dev/mynull")]
    with mounted_image(seeded, "hostile:1", mnt):
        st = os.lstat(mnt / "dev/mynull")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert (mnt / "innocent/file").is_file()


# --------------------------------------------------------------------------- broken containers


def test_truncated_archive(images, seeded, tmp_path):
    full = images.package("app", "docker-archive").read_bytes()
    cut = tmp_path / "truncated.tar"
    cut.write_bytes(full[: len(full) * 3 // 5])
    assert_rejected(seeded, cut, r"truncat|unexpected end|eof|end of|corrupt|incomplete|"
                                 r"invalid|tar|missing|not found")


def test_truncated_layer_with_matching_digest(seeded, tmp_path):
    blob = gzip_bytes(LayerTar().dir("d").file("d/f", os.urandom(200_000)).bytes())
    layer = Layer(blob[: len(blob) // 2], OCI_LAYER_GZIP, "sha256:" + "0" * 64)
    assert_rejected(seeded, hostile_layout(tmp_path, layer),
                    r"truncat|unexpected end|eof|end of|corrupt|incomplete|gzip|decompress")


def test_corrupt_gzip(seeded, tmp_path):
    tar = LayerTar().dir("d").file("d/f", b"compressible " * 20_000).bytes()
    good = Layer.of(tar)
    bad = bytearray(good.blob)
    for i in range(len(bad) // 3, len(bad) // 3 + 64):
        bad[i] ^= 0x5A
    layer = Layer(bytes(bad), OCI_LAYER_GZIP, good.diff_id)  # digest of the bad bytes: right
    assert_rejected(seeded, hostile_layout(tmp_path, layer),
                    r"gzip|decompress|corrupt|crc|invalid|deflate|zlib|compress")


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_missing_blob(images, seeded, tmp_path, which):
    layout = tmp_path / "missing"
    shutil.copytree(images.package("tools", "oci-dir"), layout)
    desc = manifest_descriptor(layout)
    manifest = read_blob_json(layout, desc["digest"])
    victim = {"layer": manifest["layers"][-1]["digest"], "config": manifest["config"]["digest"],
              "manifest": desc["digest"]}[which]
    blob_path(layout, victim).unlink()
    assert_rejected(seeded, layout, r"missing|not found|no such|blob|" + victim[7:19])


def test_blob_digest_mismatch(images, seeded, tmp_path):
    layout = tmp_path / "mismatch"
    shutil.copytree(images.package("tools", "oci-dir"), layout)
    manifest = read_blob_json(layout, manifest_descriptor(layout)["digest"])
    path = blob_path(layout, manifest["layers"][-1]["digest"])
    other = gzip_bytes(LayerTar().file("other", b"not the layer\n").bytes())
    path.write_bytes(other)
    assert_rejected(seeded, layout, r"digest|checksum|hash|mismatch|verif")


def test_size_mismatch(images, seeded, tmp_path):
    layout = tmp_path / "size"
    shutil.copytree(images.package("tools", "oci-dir"), layout)

    def wrong_size(manifest: dict, _layout: Path) -> dict:
        layers = [dict(d) for d in manifest["layers"]]
        layers[-1]["size"] += 1
        return dict(manifest, layers=layers)

    rewrite_manifest(layout, wrong_size)
    assert_rejected(seeded, layout, r"size|length|mismatch|digest|truncat|short")


def test_diff_id_mismatch(images, seeded, tmp_path):
    layout = tmp_path / "diffid"
    shutil.copytree(images.package("tools", "oci-dir"), layout)
    replacement = gzip_bytes(LayerTar().dir("usr").file("usr/other", b"other\n").bytes())

    def swap(manifest: dict, lay: Path) -> dict:
        layers = list(manifest["layers"])
        layers[-1] = descriptor(OCI_LAYER_GZIP, write_blob(lay, replacement), len(replacement))
        return dict(manifest, layers=layers)

    rewrite_manifest(layout, swap)
    assert_rejected(seeded, layout, r"diff.?id|mismatch|digest|verif")


def test_unknown_media_type(images, seeded, tmp_path):
    layout = tmp_path / "mediatype"
    shutil.copytree(images.package("tools", "oci-dir"), layout)

    def odd(manifest: dict, _lay: Path) -> dict:
        layers = [dict(d) for d in manifest["layers"]]
        layers[-1]["mediaType"] = "application/vnd.example.layer.v1.tar+lzma"
        return dict(manifest, layers=layers)

    rewrite_manifest(layout, odd)
    assert_rejected(seeded, layout, r"media.?type|unsupported|unknown|vnd\.example")


def test_invalid_digest_string(images, seeded, tmp_path, outside):
    """A descriptor digest that is a path (sha256:../../...) must not be opened."""
    layout = tmp_path / "baddigest"
    shutil.copytree(images.package("tools", "oci-dir"), layout)
    index = read_index(layout)
    index["manifests"][0]["digest"] = "sha256:" + DEEP + rel(outside / "victim")
    (layout / "index.json").write_text(json.dumps(index))
    assert_rejected(seeded, layout, r"digest|invalid", outside)


@pytest.mark.parametrize("where", ["index.json", "manifest", "config", "docker-manifest.json"])
def test_malformed_json(images, seeded, tmp_path, where):
    if where == "docker-manifest.json":
        source = tmp_path / "bad-manifest.tar"
        with tarfile.open(images.package("tools", "legacy-archive")) as src, \
                tarfile.open(source, "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read() if member.isfile() else None
                if member.name == "manifest.json":
                    data = b'[{"Config": "x.json", "Layers": ['
                    member.size = len(data)
                dst.addfile(member, None if data is None else io.BytesIO(data))
        assert_rejected(seeded, source, r"json|malformed|invalid|parse|decode|manifest")
        return
    layout = tmp_path / "badjson"
    shutil.copytree(images.package("tools", "oci-dir"), layout)
    broken = b'{"schemaVersion": 2, "manifests": [ '
    if where == "index.json":
        (layout / "index.json").write_bytes(broken)
    elif where == "manifest":
        digest = write_blob(layout, broken)
        index = read_index(layout)
        index["manifests"][0].update(digest=digest, size=len(broken))
        (layout / "index.json").write_text(json.dumps(index))
    else:
        def bad_config(manifest: dict, lay: Path) -> dict:
            return dict(manifest, config=descriptor(manifest["config"]["mediaType"],
                                                    write_blob(lay, broken), len(broken)))
        rewrite_manifest(layout, bad_config)
    assert_rejected(seeded, layout, r"json|malformed|invalid|parse|decode")


def test_not_an_image_at_all(seeded, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(50_000))
    assert_rejected(seeded, junk, r"archive|tar|format|invalid|not|unrecogni|manifest|index")


# --------------------------------------------------------------------------- limits


def test_too_many_layers(seeded, tmp_path):
    layers = [Layer.of(LayerTar().file(f"f{i}", f"{i}\n".encode()).bytes()) for i in range(5)]
    layout = tmp_path / "many"
    write_oci_layout(layout, layers, minimal_config([la.diff_id for la in layers]),
                     ref_name="many:1")
    assert_rejected(seeded, layout, r"layers|too many|limit|exceed",
                    env={"PYUNION_MAX_LAYERS": "3"})


def test_json_too_large(seeded, tmp_path):
    layer = innocent()
    cfg = minimal_config([layer.diff_id], extra={"config": {"Labels": {"pad": "x" * 20_000}}})
    layout = tmp_path / "bigjson"
    write_oci_layout(layout, [layer], cfg, ref_name="big:1")
    assert_rejected(seeded, layout, r"too large|too big|size|limit|exceed|bytes",
                    env={"PYUNION_MAX_JSON_BYTES": "4096"})


def test_directory_bomb(seeded, tmp_path):
    t = LayerTar().dir("bomb")
    for i in range(3000):
        t.dir(f"bomb/d{i:05d}")
    assert_rejected(seeded, hostile_layout(tmp_path, t.bytes()),
                    r"entries|too many|limit|exceed",
                    env={"PYUNION_MAX_LAYER_ENTRIES": "1000"})


def test_decompression_bomb(seeded, tmp_path):
    """64 MiB of zeros in ~70 KiB of gzip, with an 8 MiB limit on one layer."""
    size = 64 << 20
    raw = tmp_path / "bomb.tar.gz"
    tar_digest = hashlib.sha256()
    with gzip.GzipFile(raw, "wb", compresslevel=6, mtime=0) as gz:
        ti = tarfile.TarInfo("zeros")
        ti.size, ti.mtime = size, 0
        header = ti.tobuf(tarfile.PAX_FORMAT)
        chunk = bytes(1 << 20)
        pieces = [header, *([chunk] * (size >> 20)), bytes(1024)]
        for piece in pieces:
            gz.write(piece)
            tar_digest.update(piece)
    layer = Layer(raw.read_bytes(), OCI_LAYER_GZIP, "sha256:" + tar_digest.hexdigest())
    assert len(layer.blob) < 1 << 20
    assert_rejected(seeded, hostile_layout(tmp_path, layer),
                    r"too large|too big|size|limit|exceed|bytes",
                    env={"PYUNION_MAX_LAYER_BYTES": str(8 << 20)})
