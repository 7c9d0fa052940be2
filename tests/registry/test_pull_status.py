"""What ``pull`` says, as docker's pull says it: "Downloaded newer image" whenever the tag now
names another image (a new tag of a present image, another platform), "Image is up to date"
only when nothing changed; ``pull -a``; docker's warning for an image of another platform;
``search REGISTRY/TERM``."""

from __future__ import annotations

import os
from pathlib import Path

from tests.registry.conftest import Cli, ImageSet, Registry, expect_error
from tests.registry.test_interop import _multi_platform_layout

WARNING = ("WARNING: The requested image's platform (linux/arm64/v8) does not match the "
           "detected host platform (linux/amd64) and no specific platform was requested")


def _status(result) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("Status: "))


def test_status_says_what_changed(cli: Cli, images: ImageSet, make_registry, store: Path,
                                  tmp_path: Path):
    assert os.uname().machine == "x86_64", "the host platform below is amd64"
    registry = make_registry()
    first, copy = registry.ref("app:1.0"), registry.ref("app:copy")
    cli.push(images.store, "app:1.0", first)
    cli.push(images.store, "app:1.0", copy)
    assert _status(cli.pull(store, first)) == f"Status: Downloaded newer image for {first}"
    assert _status(cli.pull(store, first)) == f"Status: Image is up to date for {first}"
    # the same image under a new tag: nothing fetched, but the tag is new
    again = cli.pull(store, copy)
    assert _status(again) == f"Status: Downloaded newer image for {copy}"
    assert _status(cli.pull(store, copy)) == f"Status: Image is up to date for {copy}"

    # another platform of a multi-platform tag: its layers are here, its config is not
    digests = _multi_platform_layout(cli, images, tmp_path / "layout")
    multi = registry.ref("multi:1")
    cli.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:multi",
               f"docker://{multi}")
    cli.pull(store, multi)
    arm = cli.pull(store, multi, "--platform", "linux/arm64")
    assert _status(arm) == f"Status: Downloaded newer image for {multi}"
    assert "WARNING" not in arm.stderr  # asked for
    back = cli.pull(store, multi)  # the tag moves back to the amd64 image
    assert _status(back) == f"Status: Downloaded newer image for {multi}"
    assert "WARNING" not in back.stderr

    # a single-platform arm64 image pulled with no platform asked: docker's warning
    only_arm = registry.ref("armonly:1")
    cli.skopeo("copy", "--override-arch", "arm64", "--override-variant", "v8",
               "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:multi",
               f"docker://{only_arm}")
    pulled = cli.pull(store, only_arm)
    assert WARNING in pulled.stderr.splitlines(), pulled.stderr
    assert cli.inspect(store, only_arm)["Id"] == digests["arm64_config"]
    created = cli.run(store, "create", only_arm, "true")
    assert WARNING in created.stderr.splitlines(), created.stderr
    cli.run(store, "rm", created.stdout.strip())


def test_pull_all_tags(cli: Cli, images: ImageSet, make_registry, store: Path):
    registry = make_registry()
    for tag in ("1.0", "2.0"):
        cli.push(images.store, f"app:{tag}", registry.ref(f"app:{tag}"))
    repository = registry.ref("app")
    result = cli.run(store, "pull", "--all-tags", repository)
    lines = result.stdout.splitlines()
    assert [line for line in lines if "Pulling from" in line] == [
        f"{tag}: Pulling from {repository}" for tag in ("1.0", "2.0")]
    assert sum(line.startswith("Digest: ") for line in lines) == 2
    assert lines[-2:] == [f"Status: Downloaded newer image for {repository}", repository]
    assert sorted(row["Tag"] for row in cli.images_rows(store)) == ["1.0", "2.0"]
    again = cli.run(store, "pull", "-a", "-q", repository)
    assert again.stdout == f"{repository}\n"
    assert _status(cli.run(store, "pull", "-a", repository)) == \
        f"Status: Image is up to date for {repository}"
    expect_error(cli.run(store, "pull", "-a", registry.ref("app:1.0"), check=False),
                 "tag can't be used with --all-tags/-a")


def test_search_takes_the_registry_from_the_term(cli: Cli, images: ImageSet,
                                                 shared_registry: Registry, store: Path):
    host = shared_registry.host
    lines = cli.run(store, "search", f"{host}/app").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TAGS"]
    rows = dict(line.split(None, 1) for line in lines[1:])
    # the shared registry may hold other tests' repositories whose names hold "app" too
    assert rows[f"{host}/app"] == "1.0, 2.0", rows
    assert all(name.startswith(f"{host}/") for name in rows), rows
