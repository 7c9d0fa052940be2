"""eStargz layers written by ``save --layer-format estargz`` and ``push --format estargz``: the
blob against the format (footer, TOC and its digest, gzip members, chunk digests, the same tar
for a plain gzip reader), and the pushed image as skopeo copies and umoci unpacks it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from pathlib import Path

import pytest

from tests.registry.conftest import (
    Cli,
    ImageSet,
    Registry,
    assert_same_rootfs,
    mounted_image,
    rootfs_view,
)
from unionfs.image.archive import estargz

TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
ADDED_NAMES = {"stargz.index.json", ".no.prefetch.landmark"}


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()


def _member_starts(blob: bytes) -> list[int]:
    """Where each gzip member of ``blob`` starts, found by decompressing member by member."""
    starts, offset = [], 0
    while offset < len(blob):
        starts.append(offset)
        d = zlib.decompressobj(wbits=31)
        d.decompress(blob[offset:])
        assert d.eof, f"the gzip member at {offset} is truncated"
        offset = len(blob) - len(d.unused_data)
    return starts


def check_estargz_layer(blob: bytes, descriptor: dict, diff_id: str) -> dict:
    """Checks one blob against the format; returns its TOC."""
    assert hashlib.sha256(blob).hexdigest() == descriptor["digest"][7:]
    footer = blob[-51:]
    assert footer[12:14] == b"SG" and footer[-8:] == b"\0" * 8
    assert gzip.decompress(footer) == b""
    toc_offset = int(footer[16:32], 16)
    assert footer[32:38] == b"STARGZ"
    plain = gzip.decompress(blob)  # the whole blob, as any client reads it
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
    names = tarfile.open(fileobj=io.BytesIO(plain)).getnames()
    assert names[-1] == "stargz.index.json" and ".no.prefetch.landmark" in names
    toc_member = zlib.decompressobj(wbits=31).decompress(blob[toc_offset:])
    toc_json = toc_member[512:512 + tarfile.TarInfo.frombuf(toc_member[:512], "utf-8",
                                                             "strict").size]
    assert descriptor["annotations"][TOC_ANNOTATION] == \
        "sha256:" + hashlib.sha256(toc_json).hexdigest()
    toc = json.loads(toc_json)
    assert toc["version"] == 1
    starts = set(_member_starts(blob))
    assert toc_offset in starts and len(blob) - 51 in starts
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        for member in tar:
            if member.isreg():
                contents[member.name.removeprefix("./")] = tar.extractfile(member).read()
    rebuilt: dict[str, bytes] = {}
    for entry in toc["entries"]:
        if entry["type"] not in ("reg", "chunk") or "chunkDigest" not in entry:
            continue
        assert entry["offset"] in starts, f"{entry['name']}: no gzip member at its offset"
        data = zlib.decompressobj(wbits=31).decompress(blob[entry["offset"]:])
        size = entry["chunkSize"] or len(contents[entry["name"]]) - entry["chunkOffset"]
        assert len(data) == size
        assert entry["chunkDigest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        rebuilt[entry["name"]] = rebuilt.get(entry["name"], b"") + data
    assert rebuilt == {n: c for n, c in contents.items() if c and n != "stargz.index.json"}
    return toc


def test_saved_estargz_layers_follow_the_format(cli: Cli, images: ImageSet, tmp_path: Path):
    layout = tmp_path / "layout"
    cli.run(images.store, "save", "--format", "oci-dir", "--layer-format", "estargz", "-o",
            layout, "big:1.0")
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    assert len(manifest["layers"]) == 2
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"],
                                   strict=True):
        assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        toc = check_estargz_layer(_blob(layout, descriptor["digest"]), descriptor, diff_id)
        big = [e for e in toc["entries"] if e["name"] == "opt/big.bin"]
        if big:  # 50 MiB: chunked, the last chunk's size says 0
            assert big[0]["type"] == "reg" and len(big) == 13
            assert [e["type"] for e in big[1:]] == ["chunk"] * 12
            assert big[-1]["chunkSize"] == 0 and big[1]["chunkOffset"] == 4 << 20
    # the pyunion reader agrees with the checks above
    descriptor = manifest["layers"][1]
    blob = _blob(layout, descriptor["digest"])
    offset = estargz.parse_footer(blob[-51:])
    _, document = estargz.parse_toc_member(blob[offset:-51],
                                           descriptor["annotations"][TOC_ANNOTATION])
    with pytest.raises(estargz.EstargzError, match="TOC digest mismatch"):
        estargz.parse_toc_member(blob[offset:-51], "sha256:" + "0" * 64)
    files = estargz.files_of(document, offset)
    content = b"".join(estargz.chunk_bytes(blob[c.start:c.end], c)
                       for c in files["opt/big.bin"].chunks)
    assert hashlib.sha256(content).hexdigest() == \
        files["opt/big.bin"].entry["digest"][7:]


def test_saved_estargz_refuses_a_docker_archive(cli: Cli, images: ImageSet, tmp_path: Path):
    result = cli.run(images.store, "save", "--layer-format", "estargz", "-o",
                     tmp_path / "x.tar", "base:1.0", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("pyunion: error:")
    assert "oci" in result.stderr and not (tmp_path / "x.tar").exists()


def test_estargz_push_is_copied_by_skopeo_and_unpacked_by_umoci(
        cli: Cli, images: ImageSet, shared_registry: Registry, store: Path, tmp_path: Path):
    ref = shared_registry.ref("estargz-app:2.0")
    cli.run(images.store, "push", "-q", "--format", "estargz", "--image", "app:2.0", ref)
    layout = tmp_path / "copied"
    cli.skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:app")
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"],
                                   strict=True):
        check_estargz_layer(_blob(layout, descriptor["digest"]), descriptor, diff_id)
    cli.tool("umoci", "unpack", "--image", f"{layout}:app", tmp_path / "bundle")
    expected = rootfs_view(tmp_path / "bundle" / "rootfs")
    assert ADDED_NAMES <= set(expected)
    cli.pull(store, ref)  # an ordinary pull of the eStargz image
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "pyunion's and umoci's rootfs")
    with mounted_image(cli, images.store, "app:2.0", tmp_path / "orig") as mnt:
        original = rootfs_view(mnt)
    converted = {k: v for k, v in expected.items() if k not in ADDED_NAMES}
    assert_same_rootfs(converted, original, "the eStargz image's and the original's rootfs")
