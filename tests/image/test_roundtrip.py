"""``save`` and ``import``, checked with skopeo and umoci as independent readers.

load -> save (each format) -> load into a fresh store keeps the image id; skopeo's view of a
saved archive agrees with ``pyunion inspect``; umoci unpacks a saved image to the original
rootfs; ``import`` of a dir, a tarball (plain, gzip, zstd, stdin) makes a one-layer image whose
mounted rootfs equals the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.image.conftest import (
    assert_same_rootfs,
    images_json,
    inspect_one,
    load,
    mounted_image,
    run_pyunion,
)
from tests.image.imagebuild import CONTAINERD_NAME, REF_NAME, run, umoci_unpack_layout

SAVE_FORMATS = ("docker-archive", "oci-archive", "oci-dir")
TRANSPORT = {"docker-archive": "docker-archive", "oci-archive": "oci-archive", "oci-dir": "oci"}


def saved(store: Path, tmp_path: Path, fmt: str | None, *refs: str) -> Path:
    out = tmp_path / (f"saved-{fmt}" if fmt == "oci-dir" else f"saved-{fmt}.tar")
    opts = ["--format", fmt] if fmt else []
    run_pyunion(store, "save", *opts, "-o", out, *refs)
    assert out.exists()
    return out


def skopeo_json(*args: str) -> dict:
    return json.loads(run(["skopeo", "--insecure-policy", "inspect", *args]).stdout)


@pytest.mark.parametrize("fmt", SAVE_FORMATS)
def test_save_roundtrip(images, store, tmp_path, fmt):
    """Saved, then: loaded into a fresh store (same id), read by skopeo (config digest = Id,
    diff_ids, os/arch, Cmd/Env), copied by skopeo (every digest checked) and unpacked by umoci
    (the original rootfs)."""
    facts = images.facts("app")
    load(store, images.package("app", "docker-archive"))
    info = inspect_one(store, "app:2.0")
    out = saved(store, tmp_path, fmt, "app:2.0")

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = load(fresh, out)
    assert result.stdout.splitlines() == ["Loaded image: app:2.0"]
    again = inspect_one(fresh, "app:2.0")
    assert again["Id"] == facts.image_id
    assert again["RootFS"]["Layers"] == facts.diff_ids
    assert again["Config"] == info["Config"]

    ref = f"{TRANSPORT[fmt]}:{out}"
    raw_config = run(["skopeo", "--insecure-policy", "inspect", "--raw", "--config", ref]).stdout
    assert "sha256:" + hashlib.sha256(raw_config).hexdigest() == info["Id"] == facts.image_id
    config = json.loads(raw_config)
    assert config["rootfs"]["diff_ids"] == info["RootFS"]["Layers"]
    assert config["config"]["Cmd"] == info["Config"]["Cmd"]
    summary = skopeo_json(ref)
    assert summary["Architecture"] == info["Architecture"] == "amd64"
    assert summary["Os"] == info["Os"] == "linux"
    assert summary["Env"] == info["Config"]["Env"]
    assert len(summary["Layers"]) == len(info["RootFS"]["Layers"])
    if fmt == "docker-archive":
        assert summary["Layers"] == info["RootFS"]["Layers"], "layers are stored uncompressed"

    layout = tmp_path / "copied"
    run(["skopeo", "--insecure-policy", "copy", "-q", ref, f"oci:{layout}:x"])
    run(["umoci", "unpack", "--image", f"{layout}:x", tmp_path / "bundle"])
    assert_same_rootfs(tmp_path / "bundle/rootfs", images.reference_rootfs("app"),
                       f"umoci unpack of save --format {fmt}")


def test_umoci_unpacks_saved_oci_dir_directly(images, store, tmp_path):
    load(store, images.package("tools", "oci-dir"))
    out = saved(store, tmp_path, "oci-dir", "tools:1.0")
    assert json.loads((out / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    rootfs = umoci_unpack_layout(out, tmp_path / "bundle", tmp_path)
    assert_same_rootfs(rootfs, images.reference_rootfs("tools"), "umoci unpack of oci-dir save")


def test_default_save_is_a_docker25_archive(images, store, tmp_path):
    """oci-layout, index.json, manifest.json, repositories, blobs; plain layers named by DiffID."""
    facts = images.facts("app")
    load(store, images.package("app", "oci-dir"))
    out = saved(store, tmp_path, None, "app:2.0")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        member = lambda n: tar.extractfile(n).read()  # noqa: E731
        assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= names
        manifest = json.loads(member("manifest.json"))
        assert len(manifest) == 1
        assert manifest[0]["Config"] == f"blobs/sha256/{facts.image_id[7:]}"
        assert manifest[0]["RepoTags"] in (["app:2.0"], ["docker.io/library/app:2.0"])
        assert manifest[0]["Layers"] == [f"blobs/sha256/{d[7:]}" for d in facts.diff_ids]
        for path in manifest[0]["Layers"]:
            assert hashlib.sha256(member(path)).hexdigest() == path.rsplit("/", 1)[1]
        assert member(manifest[0]["Config"]) == facts.config_bytes
        index = json.loads(member("index.json"))
        entry, = index["manifests"]
        assert entry["annotations"][CONTAINERD_NAME] == "docker.io/library/app:2.0"
        assert entry["annotations"][REF_NAME] == "2.0"
        repos = json.loads(member("repositories"))
        assert set(repos) <= {"app", "docker.io/library/app"} and len(repos) == 1
        assert list(repos.values())[0].keys() == {"2.0"}


def test_save_two_images_stores_the_shared_base_once(images, store, tmp_path):
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    out = saved(store, tmp_path, "docker-archive", "app:2.0", "tools:1.0")
    base_blob = f"blobs/sha256/{images.facts('base').diff_ids[0][7:]}"
    with tarfile.open(out) as tar:
        assert tar.getnames().count(base_blob) == 1
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert sorted(tags for m in manifest for tags in m["RepoTags"]) in (
        ["app:2.0", "tools:1.0"], ["docker.io/library/app:2.0", "docker.io/library/tools:1.0"])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = load(fresh, out)
    assert sorted(result.stdout.splitlines()) == ["Loaded image: app:2.0",
                                                  "Loaded image: tools:1.0"]
    assert inspect_one(fresh, "tools:1.0")["Id"] == images.facts("tools").image_id
    assert inspect_one(fresh, "app:2.0")["Id"] == images.facts("app").image_id


def test_save_to_stdout_load_from_stdin(images, store, tmp_path):
    load(store, images.package("tools", "oci-dir"))
    data = run_pyunion(store, "save", "tools:1.0", binary_stdout=True).stdout
    assert data[257:262] == b"ustar", "stdout is not a tar archive"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run_pyunion(fresh, "load", input=data)
    assert result.stdout.splitlines() == ["Loaded image: tools:1.0"]
    assert inspect_one(fresh, "tools:1.0")["Id"] == images.facts("tools").image_id


def test_save_by_id_prefix(images, store, tmp_path):
    """An image named by an id prefix is saved; it loads under the same id (tags unspecified)."""
    facts = images.facts("tools")
    load(store, images.package("tools", "oci-dir"))
    out = saved(store, tmp_path, "docker-archive", facts.short_id)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = load(fresh, out)
    assert result.stdout.splitlines() in (["Loaded image: tools:1.0"],
                                          [f"Loaded image ID: {facts.image_id}"])
    assert run_pyunion(fresh, "images", "-q", "--no-trunc").stdout.split() == [facts.image_id]


def test_save_unknown_image_fails(store, tmp_path):
    out = tmp_path / "x.tar"
    result = run_pyunion(store, "save", "-o", out, "nosuch:1", check=False)
    assert result.returncode == 1 and result.stderr.startswith("pyunion: error: ")
    assert not out.exists(), "a failed save left its output behind"


# --------------------------------------------------------------------------- import


def _import_and_compare(store: Path, mnt: Path, source: Path, args: list, name: str,
                        stdin_file: Path | None = None) -> dict:
    if stdin_file is not None:
        with open(stdin_file, "rb") as f:
            result = run_pyunion(store, "import", *args, stdin=f)
    else:
        result = run_pyunion(store, "import", *args)
    image_id = result.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71, result.stdout
    info = inspect_one(store, name)
    assert info["Id"] == image_id
    assert len(info["RootFS"]["Layers"]) == 1
    with mounted_image(store, name, mnt):
        assert_same_rootfs(mnt, source, f"import {args[0]}")
    return info


def test_import_rootfs_dir(images, store, mnt):
    source = images.reference_rootfs("app")  # fifo, hard links, xattrs, set-id bits, owners
    _import_and_compare(store, mnt, source, [source, "imported:dir"], "imported:dir")


@pytest.mark.parametrize("compression", ["", "gzip", "zstd", "stdin"])
def test_import_tarball(images, store, mnt, tmp_path, compression):
    source = images.reference_rootfs("app")
    tarball = tmp_path / ("rootfs.tar" + {"gzip": ".gz", "zstd": ".zst"}.get(compression, ""))
    filt = {"gzip": ["--gzip"], "zstd": ["--zstd"]}.get(compression, [])
    subprocess.run(["tar", "--format=posix", "--xattrs", "--xattrs-include=user.*",
                    "--numeric-owner", "-cf", str(tarball), *filt, "-C", str(source), "."],
                   check=True, timeout=60)
    if compression == "stdin":
        _import_and_compare(store, mnt, source, ["-", "imported:tar"], "imported:tar",
                            stdin_file=tarball)
    else:
        _import_and_compare(store, mnt, source, [tarball, "imported:tar"], "imported:tar")


def test_import_changes_and_message(images, store, tmp_path):
    source = images.reference_rootfs("tools")
    run_pyunion(store, "import", "-m", "made by the import test", "-c", 'CMD ["/usr/bin/tool"]',
                "-c", "ENV MODE=imported", "-c", "WORKDIR /srv", source, "tooly:1")
    config = inspect_one(store, "tooly:1")["Config"]
    assert config["Cmd"] == ["/usr/bin/tool"]
    assert "MODE=imported" in config["Env"]
    assert config["WorkingDir"] == "/srv"
    history = run_pyunion(store, "history", "--no-trunc", "--format", "json", "tooly:1").stdout
    rows = [json.loads(line) for line in history.splitlines() if line.strip()]
    assert len(rows) == 1
    assert "made by the import test" in json.dumps(rows[0])


def test_import_without_name_is_untagged(images, store):
    source = images.reference_rootfs("tools")
    image_id = run_pyunion(store, "import", source).stdout.strip()
    rows = images_json(store)
    assert [(r["Repository"], r["Tag"]) for r in rows] == [("<none>", "<none>")]
    assert inspect_one(store, image_id)["RepoTags"] == []


def test_import_of_missing_source_fails(store, tmp_path):
    result = run_pyunion(store, "import", tmp_path / "nothing-here", "x:1", check=False)
    assert result.returncode == 1 and result.stderr.startswith("pyunion: error: ")
    assert images_json(store) == []
    assert not os.path.exists(tmp_path / "nothing-here")
