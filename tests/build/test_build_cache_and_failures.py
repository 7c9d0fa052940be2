"""The build cache (a full rebuild from the cache, a changed file rebuilding from its step
on, --no-cache), multi-stage builds, a failing RUN, and errors before anything runs."""

from __future__ import annotations

import json

from tests.build.conftest import build_both, compare, write_context
from tests.container.conftest import IMAGE

CACHED_FILE = f"""FROM {IMAGE}
ENV MODE=test
RUN echo one > /one
COPY first.txt /first.txt
RUN cat /first.txt > /copy-of-first
COPY second.txt /second.txt
RUN echo three > /three
"""


def _steps(output: str) -> list[str]:
    """Per step: "cache" when it was taken from the cache, else "built"."""
    marks: list[str] = []
    for line in output.splitlines():
        if line.startswith("STEP "):
            marks.append("from" if ": FROM " in line else "built")
        elif line.startswith("--> Using cache "):
            marks[-1] = "cache"
    return marks


def _history(px, image: str) -> list[dict]:
    image_id = px.image_id(image)
    with open(px.root / "blobs" / "sha256" / image_id[7:], "rb") as f:
        return json.load(f)["history"]


def test_a_rebuild_hits_the_cache_at_every_step(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": CACHED_FILE,
                                               "first.txt": "1\n", "second.txt": "2\n"})
    first = px("build", "-t", "app:1", context)
    assert _steps(first.stdout) == ["from"] + ["built"] * 6
    again = px("build", "-t", "app:2", context)
    assert _steps(again.stdout) == ["from"] + ["cache"] * 6
    assert first.stdout.split()[-1] == again.stdout.split()[-1]  # the same image
    assert again.stdout.strip().splitlines()[-1] == px.image_id("app:2")[7:]
    # a rebuild from the cache is the same image podman builds
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)
    nocache = px("build", "--no-cache", "-t", "app:3", context)
    assert _steps(nocache.stdout) == ["from"] + ["built"] * 6


def test_a_changed_file_rebuilds_from_its_step_on(px, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": CACHED_FILE,
                                               "first.txt": "1\n", "second.txt": "2\n"})
    px("build", "-t", "app:1", context)
    (context / "second.txt").write_text("two\n")
    changed = px("build", "-t", "app:2", context)
    assert _steps(changed.stdout) == ["from", "cache", "cache", "cache", "cache", "built",
                                      "built"]
    (context / "first.txt").chmod(0o600)  # a mode is part of the copy's cache key too
    changed = px("build", "-t", "app:3", context)
    assert _steps(changed.stdout) == ["from", "cache", "cache", "built", "built", "built",
                                      "built"]
    # a --build-arg a RUN sees changes that RUN's key
    arg_file = context / "Containerfile.arg"
    arg_file.write_text(f"FROM {IMAGE}\nARG V=1\nRUN echo $V > /v\n")
    px("build", "-f", arg_file, context)
    assert _steps(px("build", "-f", arg_file, context).stdout) == ["from", "cache", "cache"]
    other = px("build", "-f", arg_file, "--build-arg", "V=2", context)
    assert _steps(other.stdout) == ["from", "cache", "built"]
    assert [h["created_by"] for h in _history(px, "app:3")][-6:] == [
        "/bin/sh -c #(nop) ENV MODE=test", "/bin/sh -c echo one > /one",
        _history(px, "app:3")[-4]["created_by"], "/bin/sh -c cat /first.txt > /copy-of-first",
        _history(px, "app:3")[-2]["created_by"], "/bin/sh -c echo three > /three"]


def test_multi_stage_copy_from(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""
FROM {IMAGE} AS builder
RUN mkdir -p /out/bin && echo '#!/bin/sh' > /out/bin/tool && chmod 755 /out/bin/tool \\
    && ln -s tool /out/bin/alias && echo built > /out/note
FROM {IMAGE} AS unused
RUN echo never > /never

FROM builder AS second
RUN echo second > /out/second

FROM {IMAGE}
COPY --from=builder /out/bin /usr/local/bin/
COPY --from=second /out/second /out/note /from-second/
COPY --from=0 --chown=app /out/note /note
COPY --from={IMAGE} /etc/passwd /passwd-copy
"""})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)
    target = px("build", "-q", "--target", "second", context).stdout.strip()
    config = json.loads(px("inspect", target).stdout)[0]
    assert len(config["RootFS"]["Layers"]) == 3  # the base, builder's RUN, second's RUN


def test_a_run_that_changes_nothing_adds_no_layer(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
RUN echo writes > /file
RUN true
RUN cat /file
"""})
    ours, theirs = build_both(px, podman, context)
    # podman 4.3 makes a layer of every RUN (holding only its mount targets): the rootfs,
    # config and history are the same, the layers are not
    mine = compare(px, podman, ours, theirs, same_layers=False)
    assert len(mine["RootFS"]["Layers"]) == 2
    entries = [h for h in _history(px, ours) if h["created_by"].startswith("/bin/sh -c ")]
    assert [bool(h.get("empty_layer")) for h in entries] == [False, True, True]


def test_a_failing_run_stops_the_build_and_leaves_nothing(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
RUN echo before > /before
RUN echo output of the failing step; \\
    exit 3
RUN echo never > /never
"""})
    images_before = px("images", "-q").stdout.split()
    failed = px("build", "-t", "broken:1", context, check=False)
    theirs = podman("build", "--layers", "-t", "broken:1", context, check=False)
    assert failed.returncode == theirs.returncode != 0
    assert "output of the failing step" in failed.stdout
    assert "line 3" in failed.stderr and "exit status 3" in failed.stderr
    assert failed.stderr.startswith("pyunion: error: ")
    assert "STEP 4/4" not in failed.stdout
    assert px("ps", "-aq").stdout.split() == []
    assert "broken:1" not in px("images").stdout
    # what stays is the cache of the steps that succeeded, as with podman
    assert len(px("images", "-q").stdout.split()) == len(images_before) + 1


def test_unsupported_instructions_fail_before_anything_runs(px, tmp_path):
    cases = {
        "FROM busybox:test\nRUN echo hi > /x\nFROOM x\n": "line 3: unknown instruction: FROOM",
        "FROM busybox:test\nRUN --mount=type=cache,target=/c true\n":
            "line 2: RUN: the --mount flag is not supported",
        "RUN true\nFROM busybox:test\n": "line 1: RUN: no build stage",
        "FROM busybox:test\nADD git@github.com:a/b.git /x\n": "line 2: ADD: a git source",
        "# escape=x\nFROM busybox:test\n": "invalid escape token",
        "FROM busybox:test\nCOPY onlyone\n": "line 2: COPY: requires at least two arguments",
    }
    for n, (text, message) in enumerate(cases.items()):
        context = write_context(tmp_path / f"ctx{n}", {"Containerfile": text})
        result = px("build", context, check=False)
        assert result.returncode == 1, result
        assert result.stderr.startswith("pyunion: error: ") and message in result.stderr, result
        assert "STEP" not in result.stdout
        assert px("ps", "-aq").stdout.split() == []
    missing = write_context(tmp_path / "missing", {
        "Containerfile": f"FROM {IMAGE}\nCOPY nothere /x\n"})
    result = px("build", missing, check=False)
    assert result.returncode == 1 and "file not found in build context" in result.stderr


def test_squash(px, podman, tmp_path):
    """--squash: the base's layers, then one layer for all the build's steps (deletions of
    base files and of files earlier steps made, an emptied and remade directory)."""
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
RUN mkdir /a && echo 1 > /a/one && echo x > /etc/x && echo gone > /a/gone
ENV K=v
COPY f /a/f
RUN rm /a/one /etc/x /srv/lower/a.txt && echo 2 > /a/two && rm -rf /srv/opq \\
    && mkdir /srv/opq && echo new > /srv/opq/new && rm /a/gone
RUN rm /bin/true
""", "f": "f\n"})
    ours, theirs = build_both(px, podman, context, "--squash", podman_layers=False)
    mine = compare(px, podman, ours, theirs)
    assert len(mine["RootFS"]["Layers"]) == 2


def test_run_network_none_quiet_failure_output_and_platform(px, tmp_path):
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
RUN --network=none cat /proc/net/dev > /net-none
RUN cat /proc/net/dev > /net-host
"""})
    image = px("build", "-q", "--platform", "linux/amd64", context).stdout.strip()
    none = px("run", "--rm", image, "cat", "/net-none").stdout
    host = px("run", "--rm", image, "cat", "/net-host").stdout
    interfaces = [line.split(":")[0].strip() for line in none.splitlines() if ":" in line]
    assert interfaces == ["lo"]
    assert len(host.splitlines()) > len(none.splitlines())  # the host's interfaces
    other = px("build", "-q", "--platform", "linux/s390x", context, check=False)
    assert other.returncode == 1 and "only the host's platform" in other.stderr
    failing = write_context(tmp_path / "failing", {
        "Containerfile": f"FROM {IMAGE}\nRUN echo what went wrong; exit 5\n"})
    quiet = px("build", "-q", failing, check=False)
    assert quiet.returncode == 5 and quiet.stdout == ""
    assert "what went wrong" in quiet.stderr and "exit status 5" in quiet.stderr
