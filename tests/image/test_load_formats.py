"""``pyunion load``: every archive and layout form, every layer compression, naming, platforms.

The oracle for ids and layers is the build layout itself: the image id is the sha256 of the
config blob umoci wrote, the layers are its ``rootfs.diff_ids``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.image.conftest import (
    HEX64,
    assert_same_rootfs,
    assert_store_unchanged,
    expect_error,
    image_ids,
    images_json,
    inspect_one,
    layer_dirs_on_disk,
    load,
    mounted_image,
    run_pyunion,
    store_state,
    tmp_leftovers,
    used_layer_dirs,
)
from tests.image.imagebuild import (
    CONTAINERD_NAME,
    FORMATS,
    OCI_LAYER,
    OCI_LAYER_ZSTD,
    REF_NAME,
    blob_path,
    descriptor,
    layer_tar_bytes,
    rewrite_manifest,
    write_blob,
    write_legacy_archive,
    zstd_bytes,
)


def assert_app_loaded(store: Path, images, ref: str = "app:2.0") -> dict:
    facts = images.facts("app")
    info = inspect_one(store, ref)
    assert info["Id"] == facts.image_id
    assert info["RootFS"]["Type"] == "layers"
    assert info["RootFS"]["Layers"] == facts.diff_ids
    dirs = [Path(d) for d in info["LayerDirs"]]
    assert len(dirs) == len(facts.diff_ids)
    for d in dirs:
        assert d.parent == store / "layers", d
        assert d.is_dir(), f"layer dir {d} missing"
    assert (dirs[0] / "bin/busybox").is_file(), "LayerDirs: base first"
    assert (dirs[-1] / "opt/data/fresh").is_file(), "LayerDirs: top-most last"
    return info


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_each_format(images, store, mnt, fmt):
    """OCI dir/archive, docker-archive (skopeo's and the legacy shape), zstd, plain, v2s2.

    Each gives the same image, listed once, whose mounted rootfs equals ``umoci unpack``'s.
    """
    result = load(store, images.package("app", fmt))
    assert result.stdout.splitlines() == ["Loaded image: app:2.0"]
    info = assert_app_loaded(store, images)
    assert info["RepoTags"] == ["app:2.0"]
    rows = images_json(store)
    assert [(r["Repository"], r["Tag"]) for r in rows] == [("app", "2.0")]
    row_id = rows[0]["ID"].removeprefix("sha256:")
    assert len(row_id) >= 12 and images.facts("app").image_id[7:].startswith(row_id)
    assert layer_dirs_on_disk(store) == {Path(d).name for d in info["LayerDirs"]}
    assert tmp_leftovers(store) == []
    with mounted_image(store, "app:2.0", mnt):
        assert_same_rootfs(mnt, images.reference_rootfs("app"), f"app loaded from {fmt}")


def _chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI ChainIDs of a layer stack (image-spec config.md), computed independently."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else "sha256:" + hashlib.sha256(
            f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def test_layer_dirs_are_named_by_chain_id(images, store):
    """The store layout: ``layers/<chain id hex>/``, one dir per layer of a stack; a shared
    base (its chain id is its diff_id) is one directory for both images."""
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    expected = set()
    for tag, ref in (("app", "app:2.0"), ("tools", "tools:1.0")):
        chain = [c[7:] for c in _chain_ids(images.facts(tag).diff_ids)]
        names = [Path(d).name for d in inspect_one(store, ref)["LayerDirs"]]
        assert names == chain, f"{ref}: LayerDirs"
        expected |= set(chain)
    assert layer_dirs_on_disk(store) == expected


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "legacy-archive"])
def test_load_from_stdin(images, store, fmt):
    with open(images.package("app", fmt), "rb") as f:
        result = run_pyunion(store, "load", stdin=f)
    assert result.stdout.splitlines() == ["Loaded image: app:2.0"]
    assert_app_loaded(store, images)


def test_load_quiet_prints_only_the_result(images, store):
    result = load(store, images.package("tools", "docker-archive"), "-q")
    assert result.stdout.splitlines() == ["Loaded image: tools:1.0"]
    assert image_ids(store) == [images.facts("tools").short_id]


def test_every_format_gives_the_same_image(images, store):
    """Loading the same image from all forms into one store: one image, one dir per layer."""
    for fmt in FORMATS:
        load(store, images.package("app", fmt))
    assert image_ids(store, "-a") == [images.facts("app").short_id]
    assert layer_dirs_on_disk(store) == used_layer_dirs(store, "app:2.0")
    assert len(layer_dirs_on_disk(store)) == 3
    assert_app_loaded(store, images)


def test_load_twice_is_idempotent(images, store):
    load(store, images.package("app", "oci-archive"))
    before = store_state(store)
    result = load(store, images.package("app", "oci-archive"))
    assert result.stdout.splitlines() == ["Loaded image: app:2.0"]
    assert image_ids(store) == [images.facts("app").short_id]
    after = store_state(store)
    assert set(after["entries"]) == set(before["entries"]), "a reload added or removed files"


def test_layer_compressions_in_one_image(images, store, tmp_path):
    """gzip, zstd and uncompressed layers mixed in one manifest."""
    out = tmp_path / "mixed"
    shutil.copytree(images.package("app", "oci-dir"), out)

    def mix(manifest: dict, layout: Path) -> dict:
        layers = list(manifest["layers"])
        tar1 = layer_tar_bytes(layout, layers[1])
        z = zstd_bytes(tar1)
        layers[1] = descriptor(OCI_LAYER_ZSTD, write_blob(layout, z), len(z))
        tar2 = layer_tar_bytes(layout, layers[2])
        layers[2] = descriptor(OCI_LAYER, write_blob(layout, tar2), len(tar2))
        assert blob_path(layout, layers[2]["digest"]).exists()
        return dict(manifest, layers=layers)

    rewrite_manifest(out, mix, "app:2.0")
    load(store, out)
    assert_app_loaded(store, images)


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({CONTAINERD_NAME: "docker.io/library/named:3", REF_NAME: "3"}, "named:3"),
        ({CONTAINERD_NAME: "registry.example.com:5000/team/app:1.0", REF_NAME: "app:9"},
         "registry.example.com:5000/team/app:1.0"),
        ({REF_NAME: "app:2.0"}, "app:2.0"),
        ({REF_NAME: "example.org/ns/app:7"}, "example.org/ns/app:7"),
        ({REF_NAME: "2.0"}, None),
        ({}, None),
    ],
    ids=["containerd-wins", "containerd-registry", "ref-name", "ref-name-path", "bare-tag",
         "no-name"],
)
def test_oci_layout_naming(images, store, annotations, expected):
    layout = images.renamed_layout("app", annotations, stem=re.sub(r"\W", "_", str(expected)))
    result = load(store, layout)
    image_id = images.facts("app").image_id
    if expected is None:
        assert result.stdout.splitlines() == [f"Loaded image ID: {image_id}"]
        assert inspect_one(store, image_id)["RepoTags"] == []
        rows = images_json(store)
        assert [(r["Repository"], r["Tag"]) for r in rows] == [("<none>", "<none>")]
    else:
        assert result.stdout.splitlines() == [f"Loaded image: {expected}"]
        info = inspect_one(store, expected)
        assert info["Id"] == image_id
        assert info["RepoTags"] == [expected]


def test_docker_archive_without_repo_tags_is_untagged(images, store, tmp_path):
    archive = write_legacy_archive(tmp_path / "untagged.tar", images.facts("tools").config_bytes,
                                   images.layer_tars("tools"), None)
    result = load(store, archive)
    image_id = images.facts("tools").image_id
    assert result.stdout.splitlines() == [f"Loaded image ID: {image_id}"]
    assert inspect_one(store, image_id[7:19])["RepoTags"] == []


def test_docker_archive_short_and_full_names(images, store):
    """skopeo writes RepoTags "docker.io/library/busybox:latest"; shown as busybox:latest."""
    archive = images.package("base", "docker-archive")
    with_tar = json.loads(_tar_member(archive, "manifest.json"))
    assert with_tar[0]["RepoTags"] == ["docker.io/library/busybox:latest"]
    result = load(store, archive)
    assert result.stdout.splitlines() == ["Loaded image: busybox:latest"]
    rows = images_json(store)
    assert [(r["Repository"], r["Tag"]) for r in rows] == [("busybox", "latest")]


def _tar_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


# --------------------------------------------------------------------------- platforms


@pytest.mark.parametrize(
    ("platform", "arch"),
    [(None, "amd64"), ("linux/amd64", "amd64"), ("linux/arm64", "arm64"),
     ("linux/arm64/v8", "arm64")],
)
def test_platform_choice_from_index(images, store, platform, arch):
    opts = ["--platform", platform] if platform else []
    result = load(store, images.multi_platform(), *opts)
    assert result.stdout.splitlines() == ["Loaded image: multi:1.0"]
    info = inspect_one(store, "multi:1.0")
    facts = images.facts(arch)
    assert info["Id"] == facts.image_id
    assert info["Architecture"] == arch
    assert info["Os"] == "linux"
    assert info["RootFS"]["Layers"] == facts.diff_ids
    arch_layer = Path(info["LayerDirs"][-1])
    assert (arch_layer / "etc/arch").read_text() == f"{arch}\n"


def test_platform_not_in_index(images, store):
    load(store, images.package("tools", "oci-dir"))
    before, ids = store_state(store), image_ids(store, "-a")
    result = load(store, images.multi_platform(), "--platform", "linux/s390x", check=False)
    expect_error(result, r"platform|s390x")
    assert_store_unchanged(before, store_state(store))
    assert image_ids(store, "-a") == ids


# --------------------------------------------------------------------------- plain failures


def test_load_missing_input(store, tmp_path):
    result = load(store, tmp_path / "no-such-file.tar", check=False)
    expect_error(result, r"no such|not found|does not exist|no-such-file")


def test_load_of_a_file_that_is_no_archive(store, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all\n" * 100)
    load_ok = load(store, junk, check=False)
    expect_error(load_ok, r"archive|tar|format|invalid|not|unrecogni|manifest|index")


def test_loaded_ids_are_hex(images, store):
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    full = run_pyunion(store, "images", "-q", "--no-trunc").stdout.split()
    assert sorted(full) == sorted([images.facts("app").image_id, images.facts("tools").image_id])
    assert all(HEX64.match(i[7:]) for i in full)
