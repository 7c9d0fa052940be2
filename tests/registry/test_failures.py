"""Failing pulls: exit status 1, one ``pyunion: error:`` line, and the store as it was.

A missing tag, repository or digest; a registry that is not running; a registry stopped in the
middle of a download (the partial download is kept and the next pull resumes it with a Range
request); a blob corrupted in the registry's storage; pulls SIGKILLed at random moments.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.registry.conftest import (
    BIG_LAYER_BYTES,
    Cli,
    ImageSet,
    Registry,
    big_content,
    expect_error,
    kill_process,
    mounted_image,
    store_state,
    wait_for,
)


def manifest_layers(images: ImageSet, name: str) -> list[dict]:
    digest = images[name].manifest
    return json.loads((images.store / "blobs" / "sha256" / digest[7:]).read_bytes())["layers"]


def downloads(store: Path) -> list[str]:
    """What ``STORE/downloads`` holds besides lock files."""
    directory = store / "downloads"
    if not directory.is_dir():
        return []
    return sorted(n for n in os.listdir(directory) if not n.endswith(".lock"))


def test_missing_tag_repository_and_digest(cli: Cli, shared_registry: Registry, store: Path):
    cli.pull(store, shared_registry.ref("base:1.0"))
    before = store_state(cli, store)
    host = shared_registry.host
    cases = [
        (f"{host}/app:no-such-tag", r"not found.*manifest unknown"),
        (f"{host}/no/such-repository:1.0", r"not found.*unknown.*no/such-repository"),
        (f"{host}/app@sha256:{'0' * 64}", r"not found.*manifest unknown"),
    ]
    for ref, cause in cases:
        message = expect_error(cli.pull(store, ref, check=False), cause)
        assert host in message
        assert store_state(cli, store) == before, ref


def test_failing_pull_into_a_new_store_names_the_real_cause(cli: Cli, shared_registry: Registry,
                                                           tmp_path: Path):
    result = cli.pull(tmp_path / "new-store", shared_registry.ref("app:no-such-tag"),
                      check=False)
    expect_error(result, r"manifest unknown")


def test_registry_not_running(cli: Cli, images: ImageSet, make_registry, store: Path):
    registry = make_registry()
    registry.stop()
    cli.run(store, "images")
    before = store_state(cli, store)
    connect = rf"cannot connect to {registry.host}"
    started = time.monotonic()
    expect_error(cli.pull(store, registry.ref("app:1.0"), check=False), connect)
    assert time.monotonic() - started < 20, "a refused connection is not worth long retries"
    assert store_state(cli, store) == before
    expect_error(cli.run(store, "search", "--registry", registry.host, "app", check=False),
                 connect)
    expect_error(cli.run(store, "login", registry.host, "-u", "u", "--password-stdin",
                         input="p\n", check=False), connect)
    expect_error(
        cli.run(images.store, "push", "--image", "app:1.0", registry.ref("app:1.0"),
                check=False), connect)


def test_registry_stopped_mid_pull_then_resumed(cli: Cli, images: ImageSet, make_registry,
                                                tmp_path: Path):
    registry = make_registry()
    ref = registry.ref("big:1.0")
    cli.push(images.store, "big:1.0", ref)
    big = manifest_layers(images, "big:1.0")[-1]
    assert big["size"] > BIG_LAYER_BYTES
    for attempt in range(3):  # the download can outrun the stop; then try again
        store = tmp_path / f"store-{attempt}"
        cli.run(store, "images")
        before = store_state(cli, store)
        partial = store / "downloads" / (big["digest"][7:] + ".partial")
        proc = cli.start(store, "pull", ref, out_dir=tmp_path / f"pull-{attempt}")
        try:
            wait_for(lambda p=partial, pr=proc: p.exists() or pr.poll() is not None,
                     timeout=60, interval=0.0005, what="the partial download")
            os.kill(proc.pid, signal.SIGSTOP)  # freeze the pull, stop the registry under it
            registry.stop()
            os.kill(proc.pid, signal.SIGCONT)
            proc.wait(timeout=90)
        finally:
            kill_process(proc)
        registry.start()
        if proc.returncode == 0:
            continue
        result = subprocess.CompletedProcess(proc.args, proc.returncode, "",
                                             (tmp_path / f"pull-{attempt}" / "stderr").read_text())
        expect_error(result, rf"{registry.host}.*(refused|connect)")
        assert store_state(cli, store) == before
        assert partial.exists(), downloads(store)
        kept = partial.stat().st_size
        if kept == 0 or kept >= big["size"]:  # nothing to resume from, or nothing left
            continue
        break
    else:
        pytest.skip("the download always finished before the registry stopped")

    mark = registry.log_mark()
    cli.pull(store, ref)
    assert cli.image_ids(store) == [images["big:1.0"].id]
    big_gets = [r for r in registry.requests(mark)
                if r.method == "GET" and r.uri.endswith(big["digest"])]
    assert [(r.status, r.size) for r in big_gets] == [(206, big["size"] - kept)], big_gets
    assert downloads(store) == []


def test_corrupted_blobs_are_refused(cli: Cli, images: ImageSet, make_registry, store: Path):
    registry = make_registry()
    ref = registry.ref("app:1.0")
    cli.push(images.store, "app:1.0", ref)
    top = manifest_layers(images, "app:1.0")[-1]
    config = images["app:1.0"].id
    cli.run(store, "images")
    before = store_state(cli, store)
    for digest, cause in [(top["digest"], r"layer blob digest mismatch"),
                          (config, r"config digest mismatch")]:
        data = registry.blob_data(digest)
        original = data.read_bytes()
        data.write_bytes(bytes(b ^ 0x5A for b in original))  # same size, other bytes
        try:
            result = cli.pull(store, ref, check=False)
        finally:
            data.write_bytes(original)
        expect_error(result, cause)
        assert store_state(cli, store) == before, digest
        # The bad bytes are not kept (a download of another layer cut short by the failure
        # may stay, to be resumed).
        assert not [n for n in downloads(store) if n.startswith(digest[7:])], downloads(store)
    cli.pull(store, ref)
    assert cli.image_ids(store) == [images["app:1.0"].id]
    assert downloads(store) == []


def test_pulls_killed_at_random_moments(cli: Cli, images: ImageSet, shared_registry: Registry,
                                        store: Path, tmp_path: Path):
    ref = shared_registry.ref("big:1.0")
    cli.push(images.store, "big:1.0", ref)
    big = images["big:1.0"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cli.run(store, "images")
    partial = store / "downloads" / (manifest_layers(images, "big:1.0")[-1]["digest"][7:]
                                     + ".partial")
    for i in range(4):
        proc = cli.start(store, "pull", ref, out_dir=tmp_path / f"pull-{i}")
        try:
            if i == 0:  # surely in the middle of the big download
                wait_for(lambda pr=proc: partial.exists() or pr.poll() is not None, timeout=60,
                         interval=0.0005, what="the partial download")
            else:  # a whole pull takes about 2 s here
                time.sleep(rng.uniform(0.3, 2.5))
        finally:
            kill_process(proc)
        ids = cli.image_ids(store)
        assert ids in ([], [big.id]), f"seed {seed}, kill {i}: {ids}"
    result = cli.pull(store, ref)
    assert result.stdout.splitlines()[-1] == ref
    assert cli.image_ids(store) == [big.id], f"seed {seed}"
    info = cli.inspect(store, ref)
    layer_dirs = sorted(os.path.basename(d) for d in info["LayerDirs"])
    assert sorted(os.listdir(store / "layers")) == layer_dirs, f"seed {seed}"
    assert downloads(store) == [], f"seed {seed}"
    assert [n for n in os.listdir(store / "tmp") if not n.endswith(".lock")] == [], f"seed {seed}"
    with mounted_image(cli, store, ref, tmp_path / "mnt") as mnt:
        content = (mnt / "opt" / "big.bin").read_bytes()
    expected = big_content()
    assert hashlib.sha256(content).digest() == hashlib.sha256(expected).digest(), f"seed {seed}"
