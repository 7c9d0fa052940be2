"""Concurrent commands on one store, and loads killed with SIGKILL at random moments.

Only processes started here are signalled, by pid. Afterwards the store must be consistent:
every listed image inspects and has all its layer dirs, shared layers are unpacked once, a new
load of the killed image succeeds, and ``tmp/`` is empty after that next command.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.image.conftest import (
    HEX64,
    assert_same_rootfs,
    image_ids,
    inspect,
    inspect_one,
    layer_dirs_on_disk,
    load,
    mounted_image,
    run_pyunion,
    start_pyunion,
    tmp_leftovers,
    used_layer_dirs,
)
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

WAIT = 90.0


def finish(proc: subprocess.Popen, out_dir: Path) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return (proc.returncode, (out_dir / "stdout").read_text(errors="replace"),
            (out_dir / "stderr").read_text(errors="replace"))


def assert_consistent(store: Path) -> list[dict]:
    """Every image listed by ``images -qa`` inspects, and all its layer dirs are there."""
    ids = image_ids(store, "-a", "--no-trunc")
    infos = inspect(store, *ids) if ids else []
    for info in infos:
        assert len(info["LayerDirs"]) == len(info["RootFS"]["Layers"])
        for d in info["LayerDirs"]:
            assert Path(d).is_dir() and Path(d).parent == store / "layers", (info["Id"], d)
    assert all(HEX64.match(name) for name in layer_dirs_on_disk(store)), (
        f"non-layer entries in layers/: {sorted(layer_dirs_on_disk(store))}")
    return infos


def open_store_and_count_images(root: str) -> str | None:
    """Run in a forked process: opens the store at ``root``; returns the error, if any."""
    try:
        store = Store(root)
        store.db.execute("SELECT count(*) FROM images").fetchone()
        store.close()
    except ImageError as e:
        return str(e)
    return None


def test_processes_opening_a_new_store_at_once(tmp_path):
    """The first commands on a store race to create its database; none may find it locked.

    Forked processes (rather than CLI runs, whose start-up staggers them) open a fresh store
    together; without the opening lock about one opener in thirty failed here.
    """
    errors = []
    with multiprocessing.get_context("fork").Pool(8) as pool:
        for round_ in range(40):
            root = str(tmp_path / f"store{round_}")
            errors += [e for e in pool.map(open_store_and_count_images, [root] * 8) if e]
    assert errors == []


def test_parallel_loads_share_the_base(images, tmp_path):
    app, tools = images.facts("app"), images.facts("tools")
    sources = [images.package("app", "oci-archive"), images.package("tools", "docker-archive")]
    for round_ in range(2):
        store = tmp_path / f"store{round_}"
        store.mkdir()
        procs = [(start_pyunion(store, "load", "-i", src, out_dir=tmp_path / f"r{round_}-{i}"),
                  tmp_path / f"r{round_}-{i}") for i, src in enumerate(sources)]
        results = [finish(p, d) for p, d in procs]
        for rc, _out, err in results:
            assert rc == 0, f"parallel load failed: {err.strip()}"
        assert sorted(out for _rc, out, _err in results) == [
            "Loaded image: app:2.0\n", "Loaded image: tools:1.0\n"]
        infos = {i["Id"]: i for i in assert_consistent(store)}
        assert set(infos) == {app.image_id, tools.image_id}
        assert infos[app.image_id]["LayerDirs"][0] == infos[tools.image_id]["LayerDirs"][0]
        assert layer_dirs_on_disk(store) == used_layer_dirs(store)
        assert len(layer_dirs_on_disk(store)) == len(set(app.diff_ids + tools.diff_ids))
        assert tmp_leftovers(store) == []


def test_rmi_racing_a_load_of_an_image_sharing_the_base(images, tmp_path, mnt):
    """rmi of app (whose base layer is then unused) while tools (same base) is being loaded."""
    tools = images.facts("tools")
    rng = random.Random(1234)
    for round_ in range(2):
        store = tmp_path / f"store{round_}"
        store.mkdir()
        load(store, images.package("app", "oci-dir"))
        out_load, out_rmi = tmp_path / f"load{round_}", tmp_path / f"rmi{round_}"
        loader = start_pyunion(store, "load", "-i", images.package("tools", "docker-archive"),
                               out_dir=out_load)
        time.sleep(rng.uniform(0, 0.4))
        remover = start_pyunion(store, "rmi", "app:2.0", out_dir=out_rmi)
        (lrc, lout, lerr), (rrc, rout, rerr) = finish(loader, out_load), finish(remover, out_rmi)
        assert lrc == 0, f"load failed next to rmi: {lerr.strip()}"
        assert lout.splitlines() == ["Loaded image: tools:1.0"]
        assert rrc == 0, f"rmi failed next to load: {rerr.strip()}"
        assert "Untagged: app:2.0" in rout
        infos = assert_consistent(store)
        assert [i["Id"] for i in infos] == [tools.image_id]
        assert layer_dirs_on_disk(store) == used_layer_dirs(store)
        assert len(layer_dirs_on_disk(store)) == len(tools.diff_ids)
        base = Path(infos[0]["LayerDirs"][0])
        assert (base / "bin/busybox").stat().st_size == Path("/bin/busybox").stat().st_size
        assert tmp_leftovers(store) == []
    with mounted_image(store, "tools:1.0", mnt):
        assert_same_rootfs(mnt, images.reference_rootfs("tools"), "tools after the race")


def test_load_killed_at_random_moments(images, store, tmp_path, mnt):
    app = images.facts("app")
    source = images.package("app", "docker-archive")
    durations = []  # the shorter of two loads: one slowed by a busy moment kills too late
    for _ in range(2):
        start = time.monotonic()
        load(store, source)
        durations.append(time.monotonic() - start)
        run_pyunion(store, "rmi", "app:2.0")
    duration = min(durations)
    seed = int(os.environ.get("PYUNION_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    killed = 0
    for i in range(5):
        out_dir = tmp_path / f"kill{i}"
        proc = start_pyunion(store, "load", "-i", source, out_dir=out_dir)
        time.sleep(rng.uniform(0.05, 1.0) * duration)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait(timeout=WAIT)
        ids = [i["Id"] for i in assert_consistent(store)]
        assert ids in ([], [app.image_id]), f"seed {seed}: unexpected images {ids}"
        result = load(store, source)
        assert result.stdout.splitlines() == ["Loaded image: app:2.0"], f"seed {seed}"
        assert [i["Id"] for i in assert_consistent(store)] == [app.image_id]
        assert tmp_leftovers(store) == [], f"seed {seed}: stray entries in tmp/ after a load"
        run_pyunion(store, "rmi", "app:2.0")
        assert layer_dirs_on_disk(store) == set(), f"seed {seed}: layers left after rmi"
    assert killed >= 2, f"seed {seed}: only {killed} of 5 loads were still running when killed"
    load(store, source)
    with mounted_image(store, "app:2.0", mnt):
        assert_same_rootfs(mnt, images.reference_rootfs("app"), f"app after kills (seed {seed})")
    assert inspect_one(store, "app:2.0")["RootFS"]["Layers"] == app.diff_ids
