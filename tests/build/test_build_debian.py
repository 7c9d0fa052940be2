"""Builds on Debian bookworm (``debootstrap --variant=minbase``, the bench's cached image:
``bench.images.ensure_image``) that download packages from deb.debian.org: ``apt-get install``
in a RUN, and a multi-stage build that compiles a C program with gcc and copies the binary into
a busybox stage. Several minutes: only with ``PYUNION_BUILD_DEBIAN=1`` (``make
test-build-debian``), see conftest.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.build.conftest import build_both, compare, write_context
from tests.container.conftest import IMAGE

pytestmark = pytest.mark.timeout(1800)

HELLO_C = """#include <stdio.h>
int main(void) { printf("hello from a pyunion build\\n"); return 0; }
"""
# What apt and dpkg write that holds the time of the run (logs, caches stamped with it)
VOLATILE = ("var/log/", "var/cache/ldconfig/", "var/cache/debconf/", "var/lib/apt/lists/",
            "var/cache/apt/", "var/lib/dpkg/status-old", "var/lib/dpkg/lock")


@pytest.fixture(scope="module")
def debian_archive() -> Path:
    from bench.images import ensure_image

    cache = Path(os.environ.get("PYUNION_BUILD_DEBIAN_CACHE", "/var/tmp/pyunion-bench"))
    root, meta = ensure_image(cache, lambda message: print(message, flush=True))
    assert meta["source"] == "debootstrap", f"no Debian image: {meta.get('fallback_because')}"
    return root / "image.oci.tar"


@pytest.fixture
def with_debian(px, podman, debian_archive):
    px("load", "-q", "-i", debian_archive, timeout=300)
    podman("load", "-i", debian_archive)
    podman("tag", "localhost/debian:bookworm", "docker.io/library/debian:bookworm")
    return px


def test_gcc_multi_stage_build(with_debian, podman, tmp_path):
    px = with_debian
    context = write_context(tmp_path / "ctx", {"hello.c": HELLO_C, "Containerfile": f"""
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY hello.c .
RUN gcc -static -O2 -o hello hello.c

FROM {IMAGE}
COPY --from=build /src/hello /usr/local/bin/hello
CMD ["/usr/local/bin/hello"]
"""})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)
    run = px("run", "--rm", ours)
    assert run.stdout == "hello from a pyunion build\n"


def test_apt_get_install_in_a_run(with_debian, podman, tmp_path):
    px = with_debian
    context = write_context(tmp_path / "ctx", {"Containerfile": """FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends jq tree \\
    && rm -rf /var/lib/apt/lists/*
RUN jq --version > /jq-version
"""})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs, skip_prefixes=VOLATILE)
    assert px("run", "--rm", ours, "cat", "/jq-version").stdout.startswith("jq-1.6")
    history = json.loads(px("inspect", ours).stdout)[0]
    assert len(history["RootFS"]["Layers"]) == 3
