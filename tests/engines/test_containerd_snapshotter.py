"""``pyunion snapshotter`` under a real containerd (Debian's 1.6): pull from a local registry,
``ctr run``, a container writing into its rootfs, restarts of the snapshotter and of
containerd, and the rootfs against containerd's own overlayfs snapshotter's.

One containerd and one registry serve the whole module (the tests run in order and share the
pulled images). The image ``del:1.0`` has three layers: the registry tests' busybox base, a
layer adding ``/etc/app.conf`` and ``/opt/app``, and one deleting a file and a directory and
replacing ``/etc/app.conf`` (whiteouts, as umoci writes them); ``opaque:1.0`` adds a fourth
making ``/opt/app`` opaque. Then the layers stored once with ``pyunion pull`` (both ways).

Nothing sleeps a fixed time: the tests wait for conditions (``Containerd.wait``, with deadlines
for a loaded machine), and a ctr call right after a restart of the snapshotter is retried while
containerd reconnects (``retry_unavailable``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
from pathlib import Path

import grpc
import pytest

from tests import treesnap
from tests.cli_helpers import mount_info
from tests.container.conftest import differences, snapshot
from tests.engines.containerd import NAMESPACE, PYUNION, Containerd
from tests.image.conftest import mounted_image, rootfs_tree
from tests.image.imagebuild import LayerTar
from tests.registry.conftest import Registry, run_command
from unionfs.image.snapshotter.api import snapshots_pb2, snapshots_pb2_grpc

pytestmark = pytest.mark.timeout(300)

ROOT_LINE = "grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo"


# --------------------------------------------------------------------------- images, daemons


def _layer_deleting(layout: Path, work: Path, source: str, tag: str) -> None:
    """``tag`` = ``source`` + a layer that deletes and replaces (umoci repack's whiteouts)."""
    bundle = work / f"bundle-{tag}"
    run_command(["umoci", "unpack", "--image", f"{layout}:{source}", str(bundle)])
    rootfs = bundle / "rootfs"
    (rootfs / "etc/secret").unlink()
    shutil.rmtree(rootfs / "var")
    (rootfs / "etc/app.conf").write_text("version=3\n")
    (rootfs / "opt/app/data").mkdir(parents=True)
    (rootfs / "opt/app/data/three.txt").write_text("three\n")
    run_command(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)])
    shutil.rmtree(bundle)


def _layer_opaque(layout: Path, work: Path, source: str, tag: str) -> None:
    """``tag`` = ``source`` + a layer making ``/opt/app`` opaque (``.wh..wh..opq``: what was
    below it is gone) with one new file in it, added verbatim (``umoci raw add-layer``)."""
    layer = work / f"opaque-{tag}.tar"
    layer.write_bytes(LayerTar().dir("opt").dir("opt/app").opaque("opt/app")
                      .file("opt/app/only.txt", b"only\n").bytes())
    run_command(["umoci", "raw", "add-layer", "--image", f"{layout}:{source}", "--tag", tag,
                 str(layer)])


@pytest.fixture(scope="module")
def registry(images, tmp_path_factory):
    """A registry with ``base:1.0`` (one layer), ``del:1.0`` (three), ``big:1.0`` (two, the
    second 50 MiB) and ``opaque:1.0`` (``del:1.0`` and an opaque directory), pushed by skopeo
    from an OCI layout."""
    work = tmp_path_factory.mktemp("containerd-images")
    layout = work / "layout"
    shutil.copytree(images.layout, layout, symlinks=True)
    index = json.loads((layout / "index.json").read_text())
    base_tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    _layer_deleting(layout, work, "app1", "del")
    _layer_opaque(layout, work, "del", "opaque")
    server = Registry(work / "registry").start()
    try:
        for tag, name in ((base_tag, "base:1.0"), ("del", "del:1.0"), ("big", "big:1.0"),
                          ("opaque", "opaque:1.0")):
            run_command(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                         f"oci:{layout}:{tag}", f"docker://{server.ref(name)}"])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine(registry):
    daemons = Containerd().start()
    try:
        for name in ("base:1.0", "del:1.0"):
            for snapshotter in ("pyunion", "overlayfs"):
                daemons.pull(registry.ref(name), snapshotter)
        yield daemons
    finally:
        left = daemons.close()
    assert not left, f"left mounted: {left}"


# --------------------------------------------------------------------------- the tests


def test_run_prints_a_file_and_its_exit_status(engine, registry):
    result = engine.run(registry.ref("del:1.0"), "print",
                        f"cat /etc/app.conf /opt/app/data/three.txt; ls /var; {ROOT_LINE}; "
                        "exit 3")
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["version=3", "three"]
    fstype, source = lines[-1].split(" - ")[1].split()[:2]
    assert (fstype, source) == ("fuse.pyunion", "pyunion")
    assert "No such file" in result.stderr  # /var was deleted by the top layer
    one_layer = engine.run(registry.ref("base:1.0"), "print-base", "cat /etc/secret")
    assert (one_layer.returncode, one_layer.stdout) == (0, "s3cret\n"), one_layer.stderr


def _rootfs_tree(engine: Containerd, ref: str, snapshotter: str) -> dict:
    """The rootfs of a running container, as containerd mounted it (``ctr images mount`` of
    containerd 1.6 mounts the default snapshotter's, whatever ``--snapshotter`` says)."""
    name = f"tree-{snapshotter}"
    engine.ctr("run", "-d", "--snapshotter", snapshotter, ref, name, "sh", "-c",
               "while :; do :; done")
    try:
        rootfs = engine.base / "state/io.containerd.runtime.v2.task" / NAMESPACE / name / "rootfs"
        expected = "fuse.pyunion" if snapshotter == "pyunion" else "overlay"
        assert mount_info(rootfs).fstype == expected
        return snapshot(rootfs)
    finally:
        engine.ctr("tasks", "kill", "-s", "KILL", name)
        engine.wait(lambda: "STOPPED" in engine.ctr("tasks", "ls").stdout, "the task's end")
        engine.ctr("tasks", "rm", name)
        engine.ctr("containers", "rm", name)


def test_rootfs_identical_to_overlayfs_snapshotters(engine, registry):
    """Paths, types, modes, owners, xattrs, contents and hard links of a container's rootfs."""
    for name in ("base:1.0", "del:1.0"):
        ours = _rootfs_tree(engine, registry.ref(name), "pyunion")
        theirs = _rootfs_tree(engine, registry.ref(name), "overlayfs")
        assert ("etc/secret" in theirs["entries"]) == (name == "base:1.0")
        assert not differences(ours, theirs), name
    engine.wait(lambda: not engine.mounts(), "the unmounts (Remove leaves them to a thread)")


def _usage(engine: Containerd, key: str) -> int:
    out = engine.ctr("snapshots", "--snapshotter", "pyunion", "usage", "-b", key).stdout
    line = next(line for line in out.splitlines() if line.startswith(key))
    return int(line.split()[1])


def test_container_writes_survive_restarts(engine, registry):
    """A container writes 1 MiB into its rootfs; its snapshot's usage shows it; the snapshotter
    and its snapshot's mount daemon (SIGKILL, as a reboot would leave them) and containerd are
    restarted: the next start of the container mounts the snapshot again and sees its file."""
    script = ("cat /written.txt 2>/dev/null; echo round >> /written.txt; "
              "busybox dd if=/dev/zero of=/big.bin bs=4096 count=256 2>/dev/null")
    first = engine.run(registry.ref("del:1.0"), "writer", script, rm=False)
    assert first.returncode == 0, first.stderr
    assert 1048576 <= _usage(engine, "writer") < 1048576 + 65536  # the upper only
    info = json.loads(engine.ctr("snapshots", "--snapshotter", "pyunion", "info",
                                 "writer").stdout)
    assert info["Kind"] == "Active" and info["Parent"]

    engine.stop_snapshotter(signal.SIGKILL)
    (daemon,) = _mount_pids(engine, "writer")
    os.kill(daemon, signal.SIGKILL)
    engine.start_snapshotter()
    engine.stop_containerd()
    engine.start_containerd()
    assert _usage(engine, "writer") >= 1048576
    again = engine.output("writer", engine.ctr("tasks", "start", "writer"))
    assert again.stdout == "round\n"
    engine.ctr("tasks", "rm", "writer", check=False)  # (ctr deletes a task it waited for)
    engine.ctr("containers", "rm", "writer")


def _mount_pids(engine: Containerd, key: str) -> list[int]:
    db = sqlite3.connect(engine.store / "db.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT mount_pid FROM snapshotter_snapshots "
                                         "WHERE key LIKE ?", (f"%/{key}",))]
    finally:
        db.close()


def _client(engine: Containerd) -> snapshots_pb2_grpc.SnapshotsStub:
    channel = grpc.insecure_channel(f"unix://{engine.snapshotter_address}")
    return snapshots_pb2_grpc.SnapshotsStub(channel)


def test_snapshots_api_semantics(engine):
    """What containerd's metadata store relies on, asked of the socket directly: existing keys
    refused with ALREADY_EXISTS, a parent with children kept (FAILED_PRECONDITION), labels
    updated by field mask, a view of several layers read-only through pyunion.

    containerd is stopped meanwhile: its garbage collection (after any deletion, such as the
    previous test's, and at its start) removes every snapshot it does not know of, as these."""
    engine.stop_containerd()
    try:
        _api_semantics(_client(engine))
    finally:
        engine.start_containerd()


def _api_semantics(api: snapshots_pb2_grpc.SnapshotsStub) -> None:
    committed = [i for response in api.List(snapshots_pb2.ListSnapshotsRequest())
                 for i in response.info if i.kind == snapshots_pb2.COMMITTED]
    top = max(committed, key=lambda i: len(_ancestors(committed, i)))
    assert len(_ancestors(committed, top)) == 3

    with pytest.raises(grpc.RpcError) as refused:
        api.Prepare(snapshots_pb2.PrepareSnapshotRequest(key=top.name, parent=top.parent))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as refused:
        api.Remove(snapshots_pb2.RemoveSnapshotRequest(key=top.parent))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as refused:
        api.Stat(snapshots_pb2.StatSnapshotRequest(key="no-such-key"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    view = api.View(snapshots_pb2.ViewSnapshotRequest(key="api-view", parent=top.name,
                                                      labels={"a": "1", "b": "2"}))
    try:
        (mount,) = view.mounts
        assert (mount.type, list(mount.options)) == ("bind", ["rbind", "ro"])
        merged = mount_info(mount.source)  # the snapshotter's own read-only pyunion mount
        assert merged.fstype == "fuse.pyunion" and "ro" in merged.mount_options
        assert (Path(mount.source) / "etc/app.conf").read_text() == "version=3\n"
        with pytest.raises(OSError):
            (Path(mount.source) / "etc/new").write_text("no")
        again = api.Mounts(snapshots_pb2.MountsRequest(key="api-view"))
        assert list(again.mounts) == list(view.mounts)
        info = snapshots_pb2.Info(name="api-view", labels={"b": "3", "c": "4"})
        mask = {"paths": ["labels.b", "labels.a"]}
        updated = api.Update(snapshots_pb2.UpdateSnapshotRequest(info=info, update_mask=mask))
        assert dict(updated.info.labels) == {"b": "3"}
        assert updated.info.kind == snapshots_pb2.VIEW
        empty = api.View(snapshots_pb2.ViewSnapshotRequest(key="api-empty-view"))
        assert [(m.type, list(m.options)) for m in empty.mounts] == [("bind", ["rbind", "ro"])]
    finally:
        for key in ("api-view", "api-empty-view"):
            api.Remove(snapshots_pb2.RemoveSnapshotRequest(key=key))


def _ancestors(infos, info) -> list:
    by_name = {i.name: i for i in infos}
    chain = [info]
    while chain[-1].parent:
        chain.append(by_name[chain[-1].parent])
    return chain


def test_removal_leaves_no_mount_and_no_directory(engine, registry):
    """Removing the images removes every snapshot (containerd's garbage collection), and its
    Cleanup also deletes a directory without a row, as a Prepare killed between its mkdir and
    its insert leaves one."""
    assert engine.ctr("containers", "ls", "-q").stdout.split() == []
    orphan = engine.store / "snapshots" / "killed-in-prepare"
    (orphan / "fs").mkdir(parents=True)
    for name in ("base:1.0", "del:1.0"):
        engine.ctr("images", "rm", "--sync", registry.ref(name))
    engine.wait(lambda: engine.snapshot_dirs() == [], "the snapshots' removal")
    listed = engine.ctr("snapshots", "--snapshotter", "pyunion", "ls").stdout.splitlines()
    assert listed[1:] == []
    assert not engine.mounts()
    # those started ahead (--daemons-ahead 2); a removed stack's daemon has exited before its
    # directory went, but the refill after the last mount may still be starting one
    engine.wait(lambda: len(_mount_daemons(engine)) == 2, "two mount daemons started ahead")


def _mount_daemons(engine: Containerd) -> list[str]:
    """The snapshotter's mount.pyunion children."""
    assert engine.snapshotter is not None
    pid = str(engine.snapshotter.pid)
    return [p for p in os.listdir("/proc") if p.isdigit() and b"mount_helper" in _cmdline(p)
            and _ppid(p) == pid]


def _ppid(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return ""


def test_layers_shared_with_pyunions_store(engine, registry):
    """``--share-layers``: ``pyunion pull`` into the snapshotter's store, then ``ctr images
    pull``: each committed snapshot's files are hard links of the store's layer (one copy on
    disk), and the rootfs is the overlayfs snapshotter's but for those files' link counts."""
    ref = registry.ref("del:1.0")
    run_command([*engine_cmd(engine)[:-1], "pull", "-q", "--insecure", ref])
    engine.restart_snapshotter(options=("--share-layers",))
    engine.pull(ref)
    engine.pull(ref, "overlayfs")
    try:
        db = sqlite3.connect(engine.store / "db.sqlite")
        rows = db.execute("SELECT dir, chain_id FROM snapshotter_snapshots "
                          "WHERE kind = 'committed'").fetchall()
        db.close()
        assert len(rows) == 3 and all(chain for _, chain in rows)
        for directory, chain in rows:
            fs = engine.store / "snapshots" / directory / "fs"
            layer = engine.store / "layers" / chain.removeprefix("sha256:")
            files = [p for p in fs.rglob("*") if p.is_file() and not p.is_symlink()]
            assert files, directory
            for path in files:
                assert path.stat().st_ino == (layer / path.relative_to(fs)).stat().st_ino
        ours = _rootfs_tree(engine, ref, "pyunion")
        theirs = _rootfs_tree(engine, ref, "overlayfs")
        for entry in theirs["entries"].values():
            if "nlink" in entry:
                entry["nlink"] = 2  # each file is linked once more, from pyunion's store
        assert not differences(ours, theirs)
    finally:
        engine.ctr("images", "rm", "--sync", ref)
        run_command([*PYUNION, "--root", str(engine.store), "rmi", ref])
    engine.wait(lambda: engine.snapshot_dirs() == [], "the snapshots' removal")
    engine.restart_snapshotter()


def test_pull_links_the_layers_of_ctrs_snapshots(engine, registry, tmp_path):
    """The other direction (always): ``pyunion pull`` of an image that ``ctr`` pulled through
    the snapshotter into the same store (``opaque:1.0``: four layers, whiteouts and an opaque
    directory) makes each layer's regular files hard links of its committed snapshot's (the
    same inodes: stored once) and keeps its downloaded blob. The layers (entries, xattrs,
    mtimes), their rows, the blobs and the image's rootfs are a plain pull's into an empty
    store, but for the link counts; removing the snapshots leaves the layers whole."""
    ref = registry.ref("opaque:1.0")
    assert not list((engine.store / "layers").iterdir())
    engine.pull(ref)
    plain = tmp_path / "plain"
    try:
        pulled = run_command([*PYUNION, "--root", str(engine.store), "pull", "--insecure", ref])
        assert pulled.stderr.count(": Linked from a snapshot") == 4, pulled.stderr
        run_command([*PYUNION, "--root", str(plain), "pull", "-q", "--insecure", ref])
        db = sqlite3.connect(engine.store / "db.sqlite")
        snapshots = db.execute("SELECT dir, chain_id FROM snapshotter_snapshots "
                               "WHERE kind = 'committed'").fetchall()
        db.close()
        assert len(snapshots) == 4
        for directory, chain in snapshots:
            fs = engine.store / "snapshots" / directory / "fs"
            layer = engine.store / "layers" / chain.removeprefix("sha256:")
            files = _regular_files(layer)
            assert files, chain
            for path in files:
                assert path.stat().st_ino == (fs / path.relative_to(layer)).lstat().st_ino
        assert _store_rows(engine.store) == _store_rows(plain)
        assert _distinct_files(engine.store / "layers", engine.store / "snapshots") == \
            _distinct_files(engine.store / "snapshots")
        with mounted_image(engine.store, ref, tmp_path / "ours") as ours, \
                mounted_image(plain, ref, tmp_path / "theirs") as theirs:
            got, want = rootfs_tree(ours), rootfs_tree(theirs)
        for entry in want["entries"].values():
            if "nlink" in entry:
                entry["nlink"] *= 2  # each name has its twin in the snapshot
        treesnap.assert_same_tree(got, want, "the rootfs of the shared and the plain pull")
    finally:
        engine.ctr("images", "rm", "--sync", ref)
    # (a removed directory goes through the store's tmp/trash-*: until that is gone too)
    engine.wait(lambda: engine.snapshot_dirs() == [] and not list(
        (engine.store / "tmp").glob("trash-*")), "the snapshots' removal")
    try:
        for chain_hex in os.listdir(plain / "layers"):
            ours, theirs = (snapshot(store / "layers" / chain_hex)
                            for store in (engine.store, plain))
            assert not differences(ours, theirs), chain_hex
            whiteouts = {p for p, e in theirs["entries"].items() if e.get("rdev") == (0, 0)}
            assert {p: t for p, t in ours["mtimes"].items() if p not in whiteouts} == \
                {p: t for p, t in theirs["mtimes"].items() if p not in whiteouts}, chain_hex
    finally:
        run_command([*PYUNION, "--root", str(engine.store), "rmi", ref])


def test_pull_unpacks_a_layer_whose_snapshot_differs(engine, registry, tmp_path):
    """A snapshot's file that is not what its layer's tar says (here: its mode changed) is
    not linked: that layer is unpacked from its blob as usual (the others are linked), and the
    store's layers are a plain pull's."""
    ref = registry.ref("del:1.0")
    assert not list((engine.store / "layers").iterdir())
    engine.pull(ref)
    try:
        (changed,) = [p for p in (engine.store / "snapshots").glob("*/fs/etc/app.conf")
                      if p.read_text() == "version=3\n"]
        changed.chmod(0o600)
        pulled = run_command([*PYUNION, "--root", str(engine.store), "pull", "--insecure", ref])
        assert pulled.stderr.count(": Linked from a snapshot") == 2, pulled.stderr
        assert pulled.stderr.count(": Loaded") == 1, pulled.stderr
        plain = tmp_path / "plain"
        run_command([*PYUNION, "--root", str(plain), "pull", "-q", "--insecure", ref])
        (top,) = [c for c in os.listdir(plain / "layers")
                  if (plain / "layers" / c / "etc/app.conf").exists()
                  and (plain / "layers" / c / "etc/app.conf").read_text() == "version=3\n"]
        ours = engine.store / "layers" / top / "etc/app.conf"
        assert ours.stat().st_ino != changed.stat().st_ino
        assert (ours.stat().st_mode & 0o777, ours.stat().st_nlink) == (0o644, 1)
        for chain_hex in os.listdir(plain / "layers"):
            assert not differences(snapshot(engine.store / "layers" / chain_hex),
                                   _doubled(snapshot(plain / "layers" / chain_hex),
                                            chain_hex != top)), chain_hex
    finally:
        engine.ctr("images", "rm", "--sync", ref)
        run_command([*PYUNION, "--root", str(engine.store), "rmi", ref])
    engine.wait(lambda: engine.snapshot_dirs() == [], "the snapshots' removal")


def _doubled(tree: dict, linked: bool) -> dict:
    """``tree`` with the link counts of its regular files doubled if ``linked``."""
    if linked:
        for entry in tree["entries"].values():
            if "nlink" in entry:
                entry["nlink"] *= 2
    return tree


def _store_rows(store: Path) -> dict[str, list]:
    """The layers (but for when they were added) and the blobs the store records, and the
    files of those blobs."""
    db = sqlite3.connect(store / "db.sqlite")
    try:
        rows = {
            "layers": db.execute("SELECT chain_id, diff_id, parent, tar_size, entries, "
                                 "whiteout_format FROM layers ORDER BY chain_id").fetchall(),
            "blobs": db.execute("SELECT digest, size, media_type FROM blobs "
                                "ORDER BY digest").fetchall(),
            "images": db.execute("SELECT id, manifest_digest FROM images").fetchall()}
    finally:
        db.close()
    rows["blob files"] = sorted((name, (store / "blobs/sha256" / name).stat().st_size)
                                for name in os.listdir(store / "blobs/sha256"))
    return rows


def _regular_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if stat.S_ISREG(path.lstat().st_mode)]


def _distinct_files(*roots: Path) -> int:
    """The inodes of the regular files below ``roots``."""
    return len({(st.st_dev, st.st_ino) for root in roots for path in _regular_files(root)
                if (st := path.lstat())})


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_snapshotter_refuses_a_socket_in_use(engine):
    result = subprocess.run([*engine_cmd(engine), "--address", str(engine.snapshotter_address)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("pyunion: error: ") and "another snapshotter" in result.stderr


def engine_cmd(engine: Containerd) -> list[str]:
    return [*PYUNION, "--root", str(engine.store), "snapshotter"]


def _rows(engine: Containerd) -> list[str]:
    db = sqlite3.connect(engine.store / "db.sqlite")
    try:
        return sorted(r[0] for r in db.execute("SELECT dir FROM snapshotter_snapshots"))
    finally:
        db.close()


def test_snapshotter_killed_in_prepare(engine, registry):
    """SIGKILL inside Prepare, after the new snapshot's directories are made and before its row
    is written (strace kills it at its first fsync of the snapshots directory): the directory
    without a row is deleted when the snapshotter starts again, and containers run."""
    ref = registry.ref("base:1.0")
    engine.pull(ref)
    engine.stop_snapshotter()
    snapshots_dir = engine.store / "snapshots"
    engine.start_snapshotter(("strace", "-f", "-o", "/dev/null", "-P", str(snapshots_dir),
                              "-e", "trace=fsync", "-e", "inject=fsync:signal=KILL"))
    before = engine.snapshot_dirs()
    (traced,) = _children(engine.snapshotter.pid)
    # containerd reconnects to the restarted snapshotter after a back-off: a run may first
    # fail with "unavailable"; the one that reaches Prepare kills the snapshotter
    engine.wait(lambda: engine.ctr("run", "--rm", "--snapshotter", "pyunion", ref, "killed",
                                   "true", check=False).returncode != 0
                and not os.path.exists(f"/proc/{traced}/cmdline"), "the kill in Prepare")
    # strace -f stays while a process it traces does, and the snapshotter's mount daemons
    # (left running by design) do: strace is stopped (its tracees go on, detached)
    engine.snapshotter.kill()
    engine.snapshotter.wait(timeout=30)
    orphans = sorted(set(engine.snapshot_dirs()) - set(before))
    assert len(orphans) == 1 and orphans[0] not in _rows(engine)
    assert sorted(os.listdir(snapshots_dir / orphans[0])) == ["fs", "work"]

    engine.start_snapshotter()
    # the snapshotter queues the orphan's removal as it starts (a background thread)
    engine.wait(lambda: engine.snapshot_dirs() == before == _rows(engine),
                "the orphan's removal")
    assert engine.ctr("containers", "ls", "-q").stdout.split() == []  # (made after Prepare)
    after = engine.run(ref, "after-kill", "cat /etc/secret", retry_unavailable=True)
    assert (after.returncode, after.stdout) == (0, "s3cret\n"), after.stderr
    engine.ctr("images", "rm", "--sync", ref)
    engine.wait(lambda: engine.snapshot_dirs() == [], "the snapshots' removal")


def test_snapshotter_killed_during_a_pull(engine, registry):
    """SIGKILL of the snapshotter while containerd unpacks ``big:1.0`` (a 50 MiB second
    layer): the pull fails; after a restart it succeeds, the image runs, and once it is removed
    (a garbage collection, whose Cleanup deletes what the killed calls left) nothing is left."""
    log = engine.base / "snapshotter.log"
    mark = log.stat().st_size
    pull = subprocess.Popen(
        ["ctr", "--address", str(engine.address), "--namespace", NAMESPACE, "images", "pull",
         "--plain-http", "--snapshotter", "pyunion", registry.ref("big:1.0")],
        env=engine.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        engine.wait(lambda: "Prepare" in log.read_text()[mark:], "the first Prepare")
        engine.stop_snapshotter(signal.SIGKILL)
        assert pull.wait(timeout=60) != 0
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
    engine.start_snapshotter()
    engine.pull(registry.ref("big:1.0"))  # (retried while containerd reconnects)
    listing = engine.run(registry.ref("big:1.0"), "big", "ls -l /opt/big.bin")
    assert listing.returncode == 0 and " 52428800 " in listing.stdout, listing.stderr
    engine.ctr("images", "rm", "--sync", registry.ref("big:1.0"))
    engine.wait(lambda: engine.snapshot_dirs() == [], "the snapshots' removal")
    assert not engine.mounts()
