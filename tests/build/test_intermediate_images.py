"""Intermediate images, as podman (and docker) keep them: a build's step images are listed by
``images -a`` only, the image a rebuild took the tag from is dangling, and ``rmi`` and
``image prune`` take the untagged parents nothing else needs with them. The same session runs
with podman and with pyunion, and the listings are compared row for row as REPOSITORY:TAG
(the ids differ between the tools)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.build.conftest import Podman, podman_with_base, write_context
from tests.container.conftest import IMAGE

FIRST = f"FROM {IMAGE}\nRUN echo a > /a\nRUN echo b > /b\nENV X=1\n"
SECOND = f"FROM {IMAGE}\nRUN echo a > /a\nRUN echo c > /c\n"


def _listing(run, *args: str) -> list[str]:
    """``images`` rows as REPOSITORY:TAG (the base image left out), sorted."""
    out = run("images", *args, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    return sorted(row.rsplit("/", 1)[-1] for row in out if "busybox" not in row)


def _session(run, context) -> dict[str, list[str]]:
    seen = {}
    (context / "Containerfile").write_text(FIRST)
    run("build", "-q", "-t", "app:1", context)
    seen["after one build"] = _listing(run)
    seen["after one build, -a"] = _listing(run, "-a")
    (context / "Containerfile").write_text(SECOND)
    run("build", "-q", "-t", "app:1", context)
    seen["after the rebuild"] = _listing(run)
    seen["after the rebuild, -a"] = _listing(run, "-a")
    seen["dangling"] = _listing(run, "--filter", "dangling=true")
    run("image", "prune", "-f")
    seen["after prune, -a"] = _listing(run, "-a")
    run("rmi", "app:1")
    seen["after rmi, -a"] = _listing(run, "-a")
    return seen


@pytest.fixture
def own_podman(base_tar) -> Iterator[Podman]:
    """A podman with a store of its own: the session's holds the other tests' images, which
    its listings would show and its prune would delete."""
    with podman_with_base(base_tar) as tool:
        yield tool


def test_intermediate_images_as_podman_keeps_them(px, own_podman, tmp_path):
    ours = _session(px, write_context(tmp_path / "ours", {}))
    theirs = _session(own_podman, write_context(tmp_path / "theirs", {}))
    assert ours == theirs
    assert ours["after one build"] == ["app:1"]
    assert ours["after one build, -a"] == ["<none>:<none>", "<none>:<none>", "app:1"]
    assert ours["after rmi, -a"] == []


def test_history_names_the_step_images(px, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": FIRST})
    px("build", "-q", "-t", "app:1", context)
    ids = px("history", "-q", "--no-trunc", "app:1").stdout.split()
    listed = px("images", "-a", "-q", "--no-trunc").stdout.split()
    assert ids[0] == px.image_id("app:1")
    assert ids[:3] == [i for i in ids[:3] if i in listed]  # the three steps' images
    assert ids[3] == px.image_id(IMAGE)
    # an intermediate image cannot go while an image is built on it
    refused = px("rmi", ids[1], check=False)
    assert refused.returncode != 0 and "dependent child images" in refused.stderr
