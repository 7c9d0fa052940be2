"""Fixtures of the build tests: the same Containerfile built by ``podman build`` and by
``pyunion build``, and the results compared.

* ``podman`` (session): podman 4.3 (buildah inside) with its own storage, run root, config and
  registries file under a short directory in /var/tmp (podman cannot attach with a long
  graphroot path), ``--runtime runc``, cgroupfs, file events; the container tests' busybox
  image (``busybox:test``) loaded into it from the ``pyunion save`` archive. Removed at the end.
* ``px`` (from the container tests): a fresh pyunion store with the same image loaded.
* ``build_both``: writes a context, builds it with both, returns both image ids.
* ``compare``: the merged rootfs (every path's type, mode, owner, size, content digest, link
  target; times aside), the config fields, the layer and history counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The Debian builds download packages for minutes: only with PYUNION_BUILD_DEBIAN=1
# (``make test-build-debian``).
if os.environ.get("PYUNION_BUILD_DEBIAN") != "1":
    collect_ignore = ["test_build_debian.py"]

from tests.container import conftest as container_fixtures
from tests.container.conftest import Pyunion, mounts_under, snapshot

# the container tests' fixtures: the busybox image's archive and a fresh store holding it
base_tar = container_fixtures.base_tar
px = container_fixtures.px

# Mount targets podman (buildah 1.28) leaves in a RUN step's layer when the image lacks them;
# pyunion keeps them in the container's init layer (unionfs.image.container.initlayer).
PODMAN_MOUNT_TARGETS = ("dev", "proc", "sys", "run", "etc/hosts", "etc/hostname",
                        "etc/resolv.conf")
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels",
                 "Volumes", "StopSignal")


class Podman:
    # podman makes these whatever its configuration says: removed at close if it made them
    RUN_DIRS = (Path("/run/containers/networks"), Path("/run/containers"))

    def __init__(self, base: Path) -> None:
        self.base = base
        self._made = [d for d in self.RUN_DIRS if not d.exists()]
        graph, run, tmp = base / "graph", base / "run", base / "tmp"
        for d in (graph, run, tmp):
            d.mkdir(parents=True, exist_ok=True)
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{graph}"\nrunroot = "{run}"\n')
        (base / "containers.conf").write_text(
            '[containers]\nnetns = "host"\n[engine]\nruntime = "runc"\n'
            f'tmp_dir = "{tmp}"\nevents_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\ncgroup_manager = "cgroupfs"\n'
            f'[network]\nnetwork_config_dir = "{base}/networks"\n')
        (base / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
                    "CONTAINERS_CONF": str(base / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf")}
        self.prefix = ["podman", "--root", str(graph), "--runroot", str(run),
                       "--storage-driver", "overlay", "--runtime", "runc",
                       "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: Any, check: bool = True, timeout: float = 300,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.prefix, *(str(a) for a in args)], env=self.env,
                                capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (f"podman {args} -> {result.returncode}\n"
                                            f"{result.stdout}\n{result.stderr}")
        return result

    def inspect(self, image: str) -> dict[str, Any]:
        return json.loads(self("image", "inspect", image).stdout)[0]

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        point = self("image", "mount", image).stdout.strip()
        try:
            yield Path(point)
        finally:
            self("image", "unmount", "--force", image, check=False)

    def close(self) -> None:
        """Removes its containers and mounts, then its directory (not ``system reset``,
        which would also touch the host's networks)."""
        self("rm", "-a", "-f", check=False)
        self("image", "unmount", "-a", "--force", check=False)
        for point, _fstype, _source in mounts_under(self.base):
            subprocess.run(["umount", point], capture_output=True)
            if any(p == point for p, _, _ in mounts_under(self.base)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        for directory in self._made:
            with contextlib.suppress(OSError):
                directory.rmdir()


@contextlib.contextmanager
def podman_with_base(base_tar: Path) -> Iterator[Podman]:
    """A podman with a store of its own holding the busybox image; removed at the end."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (make test installs it)")
    tool = Podman(Path(tempfile.mkdtemp(prefix="pyub-", dir="/var/tmp")))
    try:
        tool("load", "-i", base_tar)
        yield tool
    finally:
        tool.close()


@pytest.fixture(scope="session")
def podman(base_tar) -> Iterator[Podman]:
    with podman_with_base(base_tar) as tool:
        yield tool


def write_context(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def build_both(px: Pyunion, podman: Podman, context: Path, *args: Any,
               podman_layers: bool = True) -> tuple[str, str]:
    """The context built by both (``args``: extra options for both; podman with ``--layers``
    unless told, as ``--squash`` wants); the two image ids."""
    ours = px("build", "-q", *args, context, timeout=300)
    layers = ["--layers"] if podman_layers else []
    theirs = podman("build", *layers, "-q", *args, context, cwd=context)
    return "sha256:" + ours.stdout.split()[-1], "sha256:" + theirs.stdout.split()[-1]


def _podman_tree(podman: Podman, image: str, ours: dict[str, Any]) -> dict[str, Any]:
    with podman.mounted(image) as point:
        tree = snapshot(point)
    for path in PODMAN_MOUNT_TARGETS:
        entry = tree["entries"].get(path)
        if entry is None or path in ours["entries"]:
            continue
        empty = (stat.S_ISDIR(entry["type"]) and not any(
            p.startswith(path + "/") for p in tree["entries"])) or entry.get("size") == 0
        if empty:
            del tree["entries"][path]
    return tree


def _our_tree(px: Pyunion, image: str) -> dict[str, Any]:
    point = px.tmp / f"mnt-{image[7:19]}"
    point.mkdir(exist_ok=True)
    px("mount-image", image, point)
    try:
        return snapshot(point)
    finally:
        px("umount-image", point)


def _entries(tree: dict[str, Any]) -> dict[str, Any]:
    """Entries without the link counts of directories and files (hard links are compared as
    groups) and without xattrs podman's overlay adds."""
    out = {}
    for path, entry in tree["entries"].items():
        out[path] = {k: v for k, v in entry.items() if k not in ("nlink", "xattrs")}
    return out


def _config(inner: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in CONFIG_FIELDS:
        value = inner.get(name)
        if name == "Labels" and value:
            value = {k: v for k, v in value.items() if k != "io.buildah.version"}
        out[name] = value or None
    return out


def compare(px: Pyunion, podman: Podman, ours: str, theirs: str, *,
            same_layers: bool = True, skip_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Asserts both images are the same (rootfs, config, layer and history counts);
    returns pyunion's inspect document. Paths under ``skip_prefixes`` are compared by
    presence and type only (files that hold the time they were written)."""
    our_tree = _our_tree(px, ours)
    their_tree = _podman_tree(podman, theirs, our_tree)
    a, b = _entries(our_tree), _entries(their_tree)
    for tree in (a, b):
        for path, entry in tree.items():
            if path.startswith(skip_prefixes):
                tree[path] = {"type": entry["type"]}
    diffs = [f"{p}: pyunion {a.get(p)} podman {b.get(p)}" for p in sorted(set(a) | set(b))
             if a.get(p) != b.get(p)]
    assert not diffs, "rootfs differs:\n  " + "\n  ".join(diffs[:30])
    assert our_tree["links"] == their_tree["links"]
    mine = json.loads(px("inspect", ours).stdout)[0]
    other = podman.inspect(theirs)
    assert _config(mine["Config"]) == _config(other["Config"])
    with open(px.root / "blobs" / "sha256" / ours[7:], "rb") as f:
        my_config = json.load(f)
    their_history = other.get("History") or []
    assert len(my_config.get("history") or []) == len(their_history), (
        [h.get("created_by") for h in my_config.get("history") or []],
        [h.get("created_by") for h in their_history])
    if same_layers:
        assert len(mine["RootFS"]["Layers"]) == len(other["RootFS"]["Layers"])
    return mine
