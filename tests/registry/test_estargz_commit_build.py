"""``commit --format estargz`` and ``build --format estargz``: the layers they write are eStargz
blobs kept as such in the store, so that an ordinary ``push`` sends them unchanged, with the
TOC digest annotation (read back from each blob, for the base layers too); skopeo copies the
pushed image, its blobs pass the format checks of ``test_estargz``, umoci unpacks it, and
``pull --lazy`` of it is lazy for every layer and mounts the same rootfs."""

from __future__ import annotations

import gzip
import json
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
from tests.registry.test_estargz import ADDED_NAMES, TOC_ANNOTATION, check_estargz_layer
from tests.registry.test_lazy_pull import marked_files

BASE = "estargz-base:2.0"
SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"


@pytest.fixture(scope="module")
def estargz_base(images: ImageSet, shared_registry: Registry, session_env) -> str:
    """app:2.0 pushed as eStargz: the base the commits and builds start from."""
    Cli(session_env).run(images.store, "push", "-q", "--format", "estargz", "--image",
                         "app:2.0", shared_registry.ref(BASE))
    return shared_registry.ref(BASE)


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()


def check_pushed(cli: Cli, store: Path, image: str, ref: str, tmp_path: Path,
                 new_layers: int, lazy_base: bool = False) -> dict:
    """Pushes ``image`` as stored (no --format) to ``ref``; checks that the registry has the
    store's very manifest, that skopeo copies it and every layer is eStargz with its TOC
    annotation (and uncompressed size, but for base layers that were lazy when the image
    was made); returns the rootfs umoci unpacks from skopeo's copy."""
    stored = cli.inspect(store, image)
    pushed = cli.run(store, "push", "--image", image, ref).stdout
    assert f"digest: {stored['ManifestDigest']} " in pushed  # sent unchanged
    tmp_path.mkdir(exist_ok=True)
    layout = tmp_path / "copied"
    cli.skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:img")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == stored["ManifestDigest"]
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    assert len(manifest["layers"]) == 2 + new_layers  # app:2.0's two, and the new ones
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"],
                                   strict=True):
        assert TOC_ANNOTATION in descriptor.get("annotations", {}), descriptor
        blob = _blob(layout, descriptor["digest"])
        check_estargz_layer(blob, descriptor, diff_id)
        if SIZE_ANNOTATION in descriptor["annotations"] or not lazy_base:
            assert int(descriptor["annotations"][SIZE_ANNOTATION]) == \
                len(gzip.decompress(blob))
    cli.tool("umoci", "unpack", "--image", f"{layout}:img", tmp_path / "bundle")
    return rootfs_view(tmp_path / "bundle" / "rootfs")


def check_lazy_pull(cli: Cli, ref: str, expected: dict, tmp_path: Path, layers: int) -> None:
    """``pull --lazy`` of ``ref`` records every layer lazy, and mounts ``expected``."""
    lazy_store = tmp_path / "lazy-store"
    result = cli.pull(lazy_store, ref, "--lazy", "--lazy-rate", "0")
    assert "Pulled lazily" in result.stdout + result.stderr
    assert len(list((lazy_store / "lazy").iterdir())) == layers
    assert marked_files(lazy_store)  # placeholders: the files are not here yet
    with mounted_image(cli, lazy_store, ref, tmp_path / "lazy-mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "the lazy mount's and umoci's rootfs")


def test_commit_format_estargz_is_pushed_unchanged_and_pulled_lazily(
        cli: Cli, estargz_base: str, shared_registry: Registry, store: Path, tmp_path: Path):
    cli.pull(store, estargz_base)  # an ordinary pull: the eStargz blobs kept as they are
    cli.run(store, "run", "--name", "c1", "--network", "none", estargz_base, "/bin/sh", "-c",
            "echo committed > /opt/app/new.txt && rm /etc/app.conf && mkdir -p /srv/d && "
            "ln -s ../opt/app/run /srv/d/run && chmod 600 /opt/app/data/two.txt")
    cli.run(store, "commit", "--format", "estargz", "c1", "committed:1")
    expected = check_pushed(cli, store, "committed:1", shared_registry.ref("committed:1"),
                            tmp_path, new_layers=1)
    assert ADDED_NAMES <= set(expected)
    assert "opt/app/new.txt" in expected and "etc/app.conf" not in expected
    with mounted_image(cli, store, "committed:1", tmp_path / "mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "the committed image's and umoci's "
                                                       "rootfs")
    check_lazy_pull(cli, shared_registry.ref("committed:1"), expected, tmp_path, layers=3)


def test_build_format_estargz_is_pushed_unchanged_and_pulled_lazily(
        cli: Cli, estargz_base: str, shared_registry: Registry, store: Path, tmp_path: Path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "added.txt").write_text("copied in\n")
    (context / "Containerfile").write_text(
        f"FROM {estargz_base}\n"
        "RUN echo built > /opt/app/built.txt && rm /etc/app.conf\n"
        "COPY added.txt /opt/added/\n"
        'CMD ["/opt/app/run"]\n')
    cli.run(store, "build", "--format", "estargz", "-t", "built:1", context)
    expected = check_pushed(cli, store, "built:1", shared_registry.ref("built:1"),
                            tmp_path / "pushed", new_layers=2)
    assert expected["opt/added/added.txt"]["size"] == len("copied in\n")
    assert "opt/app/built.txt" in expected and "etc/app.conf" not in expected
    with mounted_image(cli, store, "built:1", tmp_path / "mnt") as mnt:
        assert_same_rootfs(rootfs_view(mnt), expected, "the built image's and umoci's rootfs")
    check_lazy_pull(cli, shared_registry.ref("built:1"), expected, tmp_path, layers=4)
    # the cache knows the format: the same steps without it are gzip layers again
    cli.run(store, "build", "-t", "built:gzip", context)
    plain = cli.inspect(store, "built:gzip")["RootFS"]["Layers"]
    assert plain[:2] == cli.inspect(store, "built:1")["RootFS"]["Layers"][:2]
    assert not set(plain[2:]) & set(cli.inspect(store, "built:1")["RootFS"]["Layers"])


def test_commit_over_a_lazy_image_keeps_its_base_layers_annotations(
        cli: Cli, estargz_base: str, shared_registry: Registry, store: Path, tmp_path: Path):
    """The base layers' blobs are not in the store yet: their TOC digests come from the TOCs
    their directories hold; the image is pushed once an ordinary pull completed them."""
    cli.pull(store, estargz_base, "--lazy", "--lazy-rate", "0")
    cli.run(store, "run", "--name", "c1", "--network", "none", estargz_base, "/bin/sh", "-c",
            "cat /opt/app/run > /opt/app/copy")
    assert len(list((store / "lazy").iterdir())) == 2  # still lazy
    cli.run(store, "commit", "--format", "estargz", "c1", "on-lazy:1")
    digest = cli.inspect(store, "on-lazy:1")["ManifestDigest"]
    stored = json.loads((store / "blobs" / "sha256" / digest[7:]).read_bytes())
    base = json.loads(cli.skopeo("inspect", "--raw", "--tls-verify=false",
                                 f"docker://{estargz_base}").stdout)
    assert [d["annotations"][TOC_ANNOTATION] for d in stored["layers"][:2]] == \
        [d["annotations"][TOC_ANNOTATION] for d in base["layers"]]
    cli.pull(store, estargz_base)  # completes the base layers: now the image can be pushed
    ref = shared_registry.ref("on-lazy:1")
    expected = check_pushed(cli, store, "on-lazy:1", ref, tmp_path / "pushed", new_layers=1,
                            lazy_base=True)
    assert expected["opt/app/copy"]["sha256"] == expected["opt/app/run"]["sha256"]
    check_lazy_pull(cli, ref, expected, tmp_path, layers=3)
