"""Interoperability with the containers/image tools: skopeo pushes what pyunion pulls, pyunion
pushes what skopeo copies and umoci unpacks, and multi-platform indexes resolve per platform."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.registry.conftest import (
    Cli,
    ImageSet,
    Registry,
    assert_same_rootfs,
    expect_error,
    make_rootfs,
    mounted_image,
    rootfs_view,
    store_state,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def umoci_rootfs(cli: Cli, layout: Path, tag: str, bundle: Path) -> Path:
    cli.tool("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


def test_umoci_image_pushed_by_skopeo_is_pulled(cli: Cli, shared_registry: Registry,
                                                store: Path, tmp_path: Path):
    layout = tmp_path / "layout"
    cli.tool("umoci", "init", "--layout", layout)
    cli.tool("umoci", "new", "--image", f"{layout}:1")
    bundle = tmp_path / "bundle1"
    make_rootfs(umoci_rootfs(cli, layout, "1", bundle))
    cli.tool("umoci", "repack", "--image", f"{layout}:1", bundle)
    # A second layer that deletes (a whiteout), replaces and adds.
    bundle2 = tmp_path / "bundle2"
    rootfs2 = umoci_rootfs(cli, layout, "1", bundle2)
    (rootfs2 / "etc" / "secret").unlink()
    (rootfs2 / "etc" / "group").write_text("root:x:0:\n")
    (rootfs2 / "srv" / "www").mkdir(parents=True)
    (rootfs2 / "srv" / "www" / "index.html").write_text("<p>hi</p>\n")
    os.chmod(rootfs2 / "srv" / "www", 0o2755)
    cli.tool("umoci", "repack", "--image", f"{layout}:2", bundle2)
    cli.tool("umoci", "config", "--image", f"{layout}:2", "--config.cmd", "/bin/sh")

    ref = shared_registry.ref("umoci-made:2")
    cli.skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:2", f"docker://{ref}")
    pushed = json.loads(cli.skopeo("inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    cli.pull(store, ref)
    info = cli.inspect(store, ref)
    assert info["ManifestDigest"] == pushed["Digest"]
    assert info["Config"]["Cmd"] == ["/bin/sh"]
    assert len(info["RootFS"]["Layers"]) == 2

    expected = rootfs_view(umoci_rootfs(cli, layout, "2", tmp_path / "expected"))
    assert "etc/secret" not in expected and "srv/www/index.html" in expected
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "pyunion's and umoci's rootfs")


def test_pushed_image_copied_by_skopeo_unpacks_with_umoci(cli: Cli, images: ImageSet,
                                                          shared_registry: Registry,
                                                          store: Path, tmp_path: Path):
    ref = shared_registry.ref("app:2.0")
    layout = tmp_path / "copied"
    cli.skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:app")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == images["app:2.0"].manifest
    expected = rootfs_view(umoci_rootfs(cli, layout, "app", tmp_path / "bundle"))
    assert expected["opt/app/data/two.txt"]["size"] == 4
    cli.pull(store, ref)
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "pyunion's and umoci's rootfs")


def _blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _multi_platform_layout(cli: Cli, images: ImageSet, layout: Path) -> dict:
    """An OCI layout whose tag ``multi`` is an index of linux/amd64 (the base image) and
    linux/arm64/v8 (the same layer under an arm64 config); returns the index descriptor."""
    cli.run(images.store, "save", "--format", "oci-dir", "-o", layout, "base:1.0")
    blobs = layout / "blobs" / "sha256"
    amd64_digest = images["base:1.0"].manifest
    amd64_bytes = (blobs / amd64_digest[7:]).read_bytes()
    manifest = json.loads(amd64_bytes)
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    assert config["architecture"] == "amd64"
    config.update(architecture="arm64", variant="v8")
    arm_config = _blob(layout, json.dumps(config).encode())
    manifest["config"] = {"mediaType": manifest["config"]["mediaType"], **arm_config}
    arm_manifest = _blob(layout, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd64_digest, "size": len(amd64_bytes),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, **arm_manifest,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    descriptor = {"mediaType": OCI_INDEX, **_blob(layout, json.dumps(index).encode()),
                  "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}))
    return {"index": descriptor["digest"], "amd64": amd64_digest,
            "arm64": arm_manifest["digest"], "arm64_config": arm_config["digest"]}


def test_multi_platform_index(cli: Cli, images: ImageSet, shared_registry: Registry,
                              store: Path, tmp_path: Path):
    assert os.uname().machine == "x86_64", "the default platform below is amd64"
    digests = _multi_platform_layout(cli, images, tmp_path / "layout")
    ref = shared_registry.ref("multi:1")
    cli.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:multi",
               f"docker://{ref}")
    raw = cli.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout
    assert json.loads(raw)["mediaType"] == OCI_INDEX

    before = store_state(cli, store)
    refused = cli.pull(store, ref, "--platform", "linux/s390x", check=False)
    expect_error(refused, r"no image for platform linux/s390x.*linux/amd64.*linux/arm64")
    assert store_state(cli, store) == before

    default = cli.pull(store, ref)
    assert f"Digest: {digests['index']}" in default.stdout or \
        f"Digest: {digests['amd64']}" in default.stdout, default.stdout
    amd64 = cli.inspect(store, ref)
    assert amd64["Architecture"] == "amd64"
    assert amd64["Id"] == images["base:1.0"].id
    assert amd64["ManifestDigest"] == digests["amd64"]

    cli.pull(store, ref, "--platform", "linux/arm64")
    arm64 = cli.inspect(store, ref)
    assert (arm64["Architecture"], arm64["Variant"], arm64["Os"]) == ("arm64", "v8", "linux")
    assert arm64["Id"] == digests["arm64_config"]
    assert arm64["RootFS"]["Layers"] == amd64["RootFS"]["Layers"]
    # The tag moved to the arm64 image; the amd64 one stays, untagged.
    assert sorted(cli.image_ids(store)) == sorted([amd64["Id"], arm64["Id"]])

    # The index's digest, with a platform, names the same images.
    other = tmp_path / "other-store"
    by_digest = f"{shared_registry.host}/multi@{digests['index']}"
    assert cli.pull(other, by_digest, "--platform", "linux/arm64/v8").stdout.splitlines()[-1] \
        == by_digest
    assert cli.image_ids(other) == [arm64["Id"]]


def test_pull_through_an_index_records_the_index_digest(cli: Cli, images: ImageSet,
                                                        shared_registry: Registry, store: Path,
                                                        tmp_path: Path):
    digests = _multi_platform_layout(cli, images, tmp_path / "layout")
    ref = shared_registry.ref("multi-digest:1")
    cli.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:multi",
               f"docker://{ref}")
    by_digest = f"{shared_registry.host}/multi-digest@{digests['index']}"
    cli.pull(store, by_digest)
    assert cli.inspect(store, by_digest)["Id"] == images["base:1.0"].id
    pulled = cli.pull(store, ref)
    assert f"Digest: {digests['index']}" in pulled.stdout.splitlines()
    assert by_digest in cli.inspect(store, ref)["RepoDigests"]
