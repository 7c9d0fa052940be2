"""Building an image the union way: create a container, mount it, change files through the
mount, unmount, commit, three times over (each from the previous commit).

Every round checks that ``pyunion diff`` lists exactly the changes made (as ``docker diff``
would: A/C/D), and that the committed image's rootfs is the container's merged view. The last
image is also compared with ``umoci unpack`` of ``pyunion save --format oci-dir`` and its
docker-archive with ``skopeo inspect``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess

from tests.container.conftest import IMAGE, differences, docker_changes, snapshot


def write(root: str, rel: str, data: bytes | str) -> None:
    with open(os.path.join(root, rel), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def round1(m: str) -> None:
    write(m, "srv/new1", "new one\n")                                  # add
    os.link(f"{m}/srv/new1", f"{m}/srv/new1-link")                     # hard link, new file
    os.setxattr(f"{m}/srv/new1", "user.x", b"on-new")                  # xattr on a new file
    write(m, "srv/lower/a.txt", "alpha changed\n")                     # change a lower file
    os.unlink(f"{m}/srv/lower/b.txt")                                  # delete a lower file
    os.rename(f"{m}/srv/tree", f"{m}/srv/moved")                       # rename a lower dir
    os.link(f"{m}/srv/lower/c.txt", f"{m}/srv/hl1")                    # hard link, lower file
    os.setxattr(f"{m}/srv/lower/mode.txt", "user.x", b"round1")        # xattr, lower file
    os.chmod(f"{m}/srv/lower/mode.txt", 0o600)                         # chmod, lower file
    os.chown(f"{m}/srv/moved/x", 1000, 1000)                           # chown in renamed dir
    os.makedirs(f"{m}/srv/newdir/a")                                   # new directories
    write(m, "srv/newdir/a/b", "deep\n")
    os.symlink("lower/a.txt", f"{m}/srv/newlink")                      # new symlink


def round2(m: str) -> None:
    os.unlink(f"{m}/srv/new1-link")                   # delete a file of the previous layer
    write(m, "srv/lower/c.txt", "charlie changed\n")  # change a (hard-linked) file
    shutil.rmtree(f"{m}/srv/doomed")                  # delete a lower directory tree
    shutil.rmtree(f"{m}/srv/opq")                     # ... and make it again: opaque
    os.mkdir(f"{m}/srv/opq")
    write(m, "srv/opq/fresh", "fresh\n")
    os.rename(f"{m}/srv/moved", f"{m}/srv/moved2")    # rename the dir renamed last round
    os.unlink(f"{m}/srv/lower/a.txt")                 # a file becomes a symlink
    os.symlink("c.txt", f"{m}/srv/lower/a.txt")
    os.setxattr(f"{m}/srv/newdir", "user.dir", b"yes")  # xattr on a directory
    os.removexattr(f"{m}/srv/lower/mode.txt", "user.x")  # an xattr removed


def round3(m: str) -> None:
    os.rename(f"{m}/srv/new1", f"{m}/srv/renamed1")    # rename a file
    os.chown(f"{m}/srv/links", 1000, 1000)             # chown a lower directory
    os.chmod(f"{m}/srv/lower", 0o750)                  # chmod a lower directory
    os.mkfifo(f"{m}/srv/fifo")                         # a fifo
    with open(f"{m}/srv/moved2/y/z", "r+b") as f:      # truncate a file in a renamed dir
        f.truncate(0)
        os.fsync(f.fileno())
    os.link(f"{m}/srv/moved2/x", f"{m}/srv/x-link")    # hard link into a renamed dir
    shutil.rmtree(f"{m}/srv/newdir")                   # delete a tree of an earlier layer
    os.mkdir(f"{m}/srv/emptydir", 0o700)
    write(m, "srv/big", os.urandom(1 << 20))
    os.utime(f"{m}/srv/links/target", ns=(1_000_000_000, 1_234_567_890_123_456_789))


ROUNDS = [round1, round2, round3]


def file_mtime_differences(a: dict, b: dict) -> list[str]:
    """Non-directories whose mtimes differ between two snapshots (directory mtimes and link
    counts are not compared: a union mount and an unpacked layer need not agree on them)."""
    return [f"{rel}: {ns} != {b['mtimes'][rel]}" for rel, ns in a["mtimes"].items()
            if rel in b["mtimes"] and b["mtimes"][rel] != ns
            and not stat.S_ISDIR(a["entries"][rel]["type"])]


@contextlib.contextmanager
def image_mounted(px, image: str, where):
    os.makedirs(where, exist_ok=True)
    px("mount-image", image, where)
    try:
        yield str(where)
    finally:
        px("umount-image", where, check=False)


def test_union_build_three_commits(px, workdir):
    problems: list[str] = []
    image = IMAGE
    last_view = None
    for number, change in enumerate(ROUNDS, start=1):
        name = f"c{number}"
        px("create", "--name", name, image)
        point = px("mount", name).stdout.strip()
        before = snapshot(point)
        if last_view is not None:
            # the committed image, as a new container's lowers, is the last merged view
            for line in differences(last_view, before):
                problems.append(f"round {number}: image {image} vs the last container: {line}")
        change(point)
        after = snapshot(point)
        shown_mounted = px("diff", name).stdout.splitlines() if number == 1 else None
        px("umount", name)
        shown = px("diff", name).stdout.splitlines()
        expected = docker_changes(before, after)
        if shown != expected:
            problems.append(f"round {number}: pyunion diff {name} lists\n    "
                            + "\n    ".join(shown) + "\n  expected\n    "
                            + "\n    ".join(expected) + "\n  missing: "
                            + repr(sorted(set(expected) - set(shown))) + "\n  extra: "
                            + repr(sorted(set(shown) - set(expected))))
        if shown_mounted is not None and shown_mounted != shown:
            problems.append(f"round {number}: diff differs mounted/unmounted: "
                            f"{shown_mounted} vs {shown}")
        image = f"union:{number}"
        out = px("commit", "-m", f"round {number}", name, image).stdout.strip()
        assert out.startswith("sha256:"), out
        last_view = after

    assert last_view is not None
    # The container's view also shows its init layer: the mount targets (proc, dev, sys,
    # etc/hosts...) the image lacks, which the image does not get. Leave those out.
    init_only = _init_layer_paths(px, name)
    last_view = _without(last_view, init_only)
    # the final image, mounted read-only, is the last container's merged view
    with image_mounted(px, image, workdir / "final") as point:
        final = snapshot(point)
    for line in differences(last_view, final):
        problems.append(f"mount-image {image} vs the last container: {line}")
    for line in file_mtime_differences(last_view, final):
        problems.append(f"mtime of a non-directory differs (mount-image): {line}")

    # umoci unpack of save --format oci-dir
    layout = workdir / "layout"
    px("save", "--format", "oci-dir", "-o", layout, image)
    bundle = workdir / "bundle"
    result = subprocess.run(["umoci", "unpack", "--image", f"{layout}:3", str(bundle)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    unpacked = snapshot(bundle / "rootfs")
    for line in differences(last_view, unpacked):
        problems.append(f"umoci unpack vs the last container: {line}")
    for line in file_mtime_differences(last_view, unpacked):
        problems.append(f"mtime of a non-directory differs (umoci): {line}")

    # skopeo reads the docker-archive and sees base + 3 commits
    archive = workdir / "union.tar"
    px("save", "-o", archive, image)
    result = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["Layers"]) == 4
    problems += _layers_unlike_a_load(px, archive, workdir / "loaded")
    history = json.loads(px("inspect", image).stdout)[0]
    assert len(history["RootFS"]["Layers"]) == 4
    assert history["Config"]["Env"][-1] == "FOO=bar"  # the config carries over

    assert not problems, "\n".join(problems)


def _layers_unlike_a_load(px, archive, other_root) -> list[str]:
    """commit unpacks its layer from the entries it writes, not from its blob: each committed
    layer must be, file for file (whiteouts, opaque xattrs and mtimes included), what loading
    the saved image (the blobs, through the ordinary unpacker, digests checked) makes. (A
    whiteout's own mtime is its unpacking's: it is not compared.)"""
    loaded = type(px)(other_root, px.tmp)
    loaded("load", "-i", archive)
    found = []
    for layer in sorted(os.listdir(px.root / "layers")):
        mine, theirs = snapshot(px.root / "layers" / layer), \
            snapshot(other_root / "layers" / layer)
        found += [f"committed layer {layer[:12]} vs its load: {line}"
                  for line in differences(mine, theirs)]
        found += [f"committed layer {layer[:12]}: mtime of {rel} differs"
                  for rel, ns in mine["mtimes"].items() if theirs["mtimes"].get(rel) != ns
                  and mine["entries"][rel].get("rdev") != (0, 0)]
    return found


def _init_layer_paths(px, name: str) -> set[str]:
    """The paths the container's init layer holds that the image does not."""
    ids = {json.loads(line)["Names"]: json.loads(line)["ID"]
           for line in px("ps", "-a", "--no-trunc", "--format", "json").stdout.splitlines()}
    cid = ids[name]
    init = px.root / "containers" / cid / "init"
    found = set()
    for dirpath, dirnames, filenames in os.walk(init):
        for entry in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, entry), init)
            found.add(rel)
    image_paths = {rel for rel in found
                   if any(os.path.lexists(os.path.join(layer, rel))
                          for layer in json.loads(px("inspect", IMAGE).stdout)[0]["LayerDirs"])}
    return found - image_paths


def _without(view: dict, paths: set[str]) -> dict:
    """A snapshot with ``paths`` (and what is below them) left out."""
    def kept(rel: str) -> bool:
        return not any(rel == p or rel.startswith(p + "/") for p in paths)

    return {
        "entries": {r: e for r, e in view["entries"].items() if kept(r)},
        "links": [[r for r in group if kept(r)] for group in view["links"]],
        "mtimes": {r: m for r, m in view["mtimes"].items() if kept(r)},
        "dir_nlink": {r: n for r, n in view["dir_nlink"].items() if kept(r)},
    }


def test_commit_of_an_unchanged_container_adds_an_empty_layer(px, workdir):
    """A container that only ran a process changed nothing: its commit's layer is empty."""
    px("run", "--name", "idle", IMAGE, "true")
    px("commit", "idle", "idle:1")
    layout = workdir / "layout"
    px("save", "--format", "oci-dir", "-o", layout, "idle:1")
    with open(layout / "index.json") as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    with open(layout / "blobs/sha256" / manifest_digest.split(":")[1]) as f:
        top = json.load(f)["layers"][-1]["digest"].split(":")[1]
    listing = subprocess.run(["tar", "-tzf", str(layout / "blobs/sha256" / top)],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == [], listing.stdout
