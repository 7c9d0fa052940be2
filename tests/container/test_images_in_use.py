"""An image a container uses: ``rmi`` refuses naming the container, ``rmi -f`` only untags (the
layers stay, the container still mounts and runs), and ``image prune`` deletes the image once
the container is gone."""

from __future__ import annotations

import json
import os

from tests.container.conftest import IMAGE, wait_for


def layer_dirs(px, image: str) -> list[str]:
    return json.loads(px("inspect", image).stdout)[0]["LayerDirs"]


def test_rmi_refused_then_forced_then_pruned(px):
    image_id = px.image_id(IMAGE)
    layers = layer_dirs(px, IMAGE)
    px("create", "--name", "user1", IMAGE, "cat", "/srv/lower/a.txt")

    refused = px("rmi", IMAGE, check=False)
    assert refused.returncode == 1
    assert "user1" in refused.stderr, refused.stderr
    assert px("images", "-q").stdout.split() == [image_id.split(":")[1][:12]]

    forced = px("rmi", "-f", IMAGE).stdout.splitlines()
    assert forced == [f"Untagged: {IMAGE}"], forced  # untagged, not deleted
    rows = [json.loads(line) for line in
            px("images", "--format", "json").stdout.splitlines()]
    assert [(r["Repository"], r["Tag"]) for r in rows] == [("<none>", "<none>")], rows
    assert all(os.path.isdir(d) for d in layers)

    # the container still works without its image's name
    point = px("mount", "user1").stdout.strip()
    with open(os.path.join(point, "srv/lower/a.txt")) as f:
        assert f.read() == "alpha\n"
    px("umount", "user1")
    assert px("start", "-a", "user1").stdout == "alpha\n"

    # in use: prune keeps it
    px("image", "prune", "-f")
    assert px("images", "-aq").stdout.strip() != ""
    px("rm", "user1")
    pruned = px("image", "prune", "-f").stdout
    assert f"deleted: {image_id}" in pruned, pruned
    assert px("images", "-aq").stdout == ""
    assert not any(os.path.exists(d) for d in layers)


def test_rmi_of_an_image_a_running_container_uses(px):
    """docker: ``rmi NAME`` fails naming the container; ``rmi -f NAME`` untags the running
    container's image and keeps its layers; the container runs on."""
    image_id = px.image_id(IMAGE)
    layers = layer_dirs(px, IMAGE)
    px("run", "-d", "--name", "runner", IMAGE, "sh", "-c", "echo up; sleep 300")
    wait_for(lambda: "up" in px("logs", "runner").stdout, timeout=20, what="the log line")

    refused = px("rmi", IMAGE, check=False)
    assert refused.returncode == 1
    assert "runner" in refused.stderr, refused.stderr

    by_id = px("rmi", "-f", image_id, check=False)  # by id, in use by a running container
    assert by_id.returncode == 1 and "runner" in by_id.stderr, by_id.stderr

    forced = px("rmi", "-f", IMAGE, check=False)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines() == [f"Untagged: {IMAGE}"]
    assert all(os.path.isdir(d) for d in layers)
    row = px.container("runner")
    assert row["State"] == "running", row
    assert os.path.exists(os.path.join(row["Mounts"], "srv/lower/a.txt"))

    px("rm", "-f", "runner")
    assert f"deleted: {image_id}" in px("image", "prune", "-f").stdout
    assert not any(os.path.exists(d) for d in layers)
