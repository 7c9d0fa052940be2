"""push then pull through a real registry: the same image comes back, its digests agree with
skopeo's view of the registry, and layers the store has are not fetched again."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.registry.conftest import (
    Cli,
    ImageSet,
    Registry,
    assert_same_rootfs,
    mounted_image,
    rootfs_view,
)


def stored_manifest(images: ImageSet, name: str) -> dict:
    digest = images[name].manifest
    return json.loads((images.store / "blobs" / "sha256" / digest[7:]).read_bytes())


def parse_table(text: str) -> list[dict[str, str]]:
    """A docker-style space-aligned table, columns where the header words start."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        rows.append({name: line[start:(starts[i + 1] if i + 1 < len(names) else None)].strip()
                     for i, (name, start) in enumerate(zip(names, starts, strict=True))})
    return rows


def blob_size(images: ImageSet, digest: str) -> int:
    return (images.store / "blobs" / "sha256" / digest[7:]).stat().st_size


def blob_gets(registry: Registry, since: int) -> dict[str, list[tuple[int, int]]]:
    """{digest: [(status, bytes written), ...]} of blob GETs in the access log."""
    found: dict[str, list[tuple[int, int]]] = {}
    for request in registry.requests(since):
        m = re.fullmatch(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})", request.uri)
        if request.method == "GET" and m:
            found.setdefault(m.group(1), []).append((request.status, request.size))
    return found


def test_push_then_pull_gives_the_same_image(cli: Cli, images: ImageSet,
                                             shared_registry: Registry, store: Path,
                                             tmp_path: Path):
    ref = shared_registry.ref("app:1.0")
    image = images["app:1.0"]
    result = cli.pull(store, ref)
    lines = result.stdout.splitlines()
    assert lines[0] == f"1.0: Pulling from {shared_registry.host}/app"
    assert f"Digest: {image.manifest}" in lines
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert lines[-1] == ref
    assert cli.image_ids(store) == [image.id]

    # The registry's digest (as skopeo sees it) is the manifest the store pushed verbatim.
    skopeo = json.loads(cli.skopeo("inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert skopeo["Digest"] == image.manifest
    rows = parse_table(cli.run(store, "images", "--digests").stdout)
    assert [(r["REPOSITORY"], r["TAG"], r["DIGEST"]) for r in rows] == [
        (f"{shared_registry.host}/app", "1.0", skopeo["Digest"])]
    assert image.id.startswith("sha256:" + rows[0]["IMAGE ID"])

    # skopeo's Layers are the manifest's blob digests; inspect's RootFS are the config's
    # diff_ids, one per blob, and every blob is kept in the store under its digest.
    raw = json.loads(cli.skopeo("inspect", "--raw", "--tls-verify=false",
                                f"docker://{ref}").stdout)
    config = json.loads(cli.skopeo("inspect", "--config", "--tls-verify=false",
                                   f"docker://{ref}").stdout)
    blob_digests = [layer["digest"] for layer in raw["layers"]]
    assert skopeo["Layers"] == blob_digests
    info = cli.inspect(store, ref)
    assert info["Id"] == image.id
    assert info["RootFS"]["Layers"] == config["rootfs"]["diff_ids"] == image.diff_ids
    assert len(info["RootFS"]["Layers"]) == len(blob_digests) == 2
    assert info["RepoTags"] == [ref]
    assert info["RepoDigests"] == [f"{shared_registry.host}/app@{image.manifest}"]
    assert info["Architecture"] == skopeo["Architecture"]
    assert info["Os"] == skopeo["Os"]
    for digest in [raw["config"]["digest"], *blob_digests]:
        assert (store / "blobs" / "sha256" / digest[7:]).is_file(), digest
    assert raw == stored_manifest(images, "app:1.0")

    # The pulled rootfs is the pushed one.
    with mounted_image(cli, store, ref, tmp_path / "pulled") as pulled, \
            mounted_image(cli, images.store, "app:1.0", tmp_path / "source") as source:
        assert_same_rootfs(rootfs_view(pulled), rootfs_view(source), "pulled and pushed rootfs")
        assert (pulled / "etc" / "app.conf").read_text() == "version=1\n"

    # A second pull fetches no layer blob (the small config is read again) and says so.
    mark = shared_registry.log_mark()
    again = cli.pull(store, ref)
    assert f"Status: Image is up to date for {ref}" in again.stdout.splitlines()
    assert set(blob_gets(shared_registry, mark)) <= {image.id}
    assert cli.image_ids(store) == [image.id]


def test_shared_base_layer_is_fetched_once(cli: Cli, images: ImageSet,
                                           shared_registry: Registry, store: Path):
    base_blob, app1_top = [d["digest"] for d in stored_manifest(images, "app:1.0")["layers"]]
    base_blob2, app2_top = [d["digest"] for d in stored_manifest(images, "app:2.0")["layers"]]
    assert base_blob == base_blob2 and app1_top != app2_top
    base_diff_id = images["app:1.0"].diff_ids[0]

    mark = shared_registry.log_mark()
    cli.pull(store, shared_registry.ref("app:1.0"))
    middle = shared_registry.log_mark()
    second = cli.pull(store, shared_registry.ref("app:2.0"))
    assert re.search(rf"^{base_diff_id[7:19]}: Already exists$", second.stderr, re.MULTILINE), \
        second.stderr
    assert "Status: Downloaded newer image for" in second.stdout

    both = blob_gets(shared_registry, mark)
    assert both[base_blob] == [(200, blob_size(images, base_blob))], both
    second_only = blob_gets(shared_registry, middle)
    config2 = images["app:2.0"].id
    assert set(second_only) == {app2_top, config2}, second_only
    assert [status for status, _ in second_only[app2_top]] == [200]
    served = sum(size for gets in second_only.values() for _, size in gets)
    assert served == blob_size(images, app2_top) + blob_size(images, config2)
    assert sorted(cli.image_ids(store)) == sorted([images["app:1.0"].id, images["app:2.0"].id])
    # One layer dir per chain id: the base once, and each top layer.
    assert len(list((store / "layers").iterdir())) == 3


def test_pull_by_digest(cli: Cli, images: ImageSet, shared_registry: Registry, store: Path):
    image = images["app:2.0"]
    ref = f"{shared_registry.host}/app@{image.manifest}"
    result = cli.pull(store, ref)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{image.manifest}: Pulling from {shared_registry.host}/app"
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert lines[-1] == ref
    assert cli.image_ids(store) == [image.id]
    info = cli.inspect(store, ref)
    assert info["Id"] == image.id
    assert info["RepoTags"] == []
    assert info["RepoDigests"] == [ref]
    rows = parse_table(cli.run(store, "images", "--digests").stdout)
    assert len(rows) == 1 and rows[0]["TAG"] == "<none>"
    assert image.id.startswith("sha256:" + rows[0]["IMAGE ID"])


def test_images_digests_lists_an_image_pulled_by_digest(cli: Cli, images: ImageSet,
                                                         shared_registry: Registry,
                                                         store: Path):
    image = images["app:2.0"]
    cli.pull(store, f"{shared_registry.host}/app@{image.manifest}")
    rows = parse_table(cli.run(store, "images", "--digests").stdout)
    assert [(r["REPOSITORY"], r["TAG"], r["DIGEST"]) for r in rows] == [
        (f"{shared_registry.host}/app", "<none>", image.manifest)]
