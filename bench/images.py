"""Image-manager rows: ``pyunion load`` of a distribution image against umoci and tar, and
``images``/``inspect``/``tag``/``rmi`` on a store of 1,000 images.

Cached under ``<cache>/images-v<VERSION>/`` (built on first use, like the dataset):

- ``debian-bookworm/``: a rootfs made by ``debootstrap --variant=minbase bookworm`` (without
  the downloaded ``.deb`` files and apt's package lists, like the docker ``debian`` image), packaged
  with umoci (``init``, ``new``, ``unpack``, copy the rootfs in, ``repack``: one gzip layer) as
  the OCI layout ``oci/`` (tag ``bookworm``) and the OCI archive ``image.oci.tar``
  (``skopeo copy``, ref ``debian:bookworm``); ``meta.json`` describes it. If debootstrap fails,
  ``busybox/`` is made the same way from a busybox-static rootfs and the table says so;
  debootstrap is tried again a day later.
- ``many-<N>.oci.tar``: an OCI archive of N distinct one-layer images ``bench/imgNNNN:v1``
  (a tiny rootfs with a different file each), written here in Python.
- ``store-<N>-<key>/``: the store made by ``pyunion load`` of that archive (one CLI call; if it
  fails, N ``pyunion import`` calls in 2 processes). ``key`` hashes the sources of
  ``unionfs/image``, so a store written by older code is never used. Each run times a copy.

Rows (``image-load``): each repetition runs the three, order rotated, each into a fresh empty
directory in the run directory (same filesystem as the cache), after ``sync`` and with its input
read once just before (page cache warm): ``pyunion --root STORE load -i image.oci.tar``,
``umoci unpack --image oci:bookworm BUNDLE`` and ``tar -xzf LAYER`` (the floor). The first
repetition also compares each tree with the layer's tar headers (names, types, modes, owners,
sizes, mtimes, link targets, device numbers).

Rows (``image-store``): on a copy of the 1,000-image store, 5 rounds of ``python -c 'import
unionfs.image.cli'`` (Python start-up and the CLI's imports: the floor), ``pyunion images``,
``inspect IMAGE``, ``tag IMAGE NEW``, ``rmi IMAGE`` (a different image each round), end to end
as a user runs them.

``pyunion load`` makes its store durable (syncfs) before it returns; umoci and tar leave the data
in the page cache. The ratios compare the commands as they are; each load row also records
how long a ``sync`` right after it takes (the write-back the other two leave behind).

``python -m bench.images [--quick]`` runs these rows alone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import standalone
from bench.dataset import _assert_nothing_mounted_below
from bench.implementations import REPO, cleanup_cell, mounts_below
from bench.report import _fmt, _table

VERSION = 1
LOAD, STORE = "image-load", "image-store"
NAMES = [LOAD, STORE]
TOOLS = ("pyunion", "umoci", "tar")
OCI_TAG = "bookworm"  # the tag in the umoci layout
ARCHIVE_REF = "debian:bookworm"  # the ref name in the OCI archive (tags the loaded image)
N_IMAGES = 1_000
STORE_ROUNDS = 5
TARGETS = {"umoci": 1.0, "tar": 1.5}  # pyunion/x at most
STORE_TARGET_S = 0.3
DEBOOTSTRAP_TIMEOUT = 1800.0
DEBOOTSTRAP_RETRY_S = 86_400.0

Log = Callable[[str], None]


def pyunion_cmd() -> list[str]:
    """The venv's ``pyunion`` console script (what a user runs), else ``python -m``."""
    script = Path(sys.executable).with_name("pyunion")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "unionfs.image.cli"]


def pyunion_missing(timeout: float = 60.0) -> str | None:
    """Why ``pyunion`` cannot run (None: ``pyunion --help`` works)."""
    try:
        _run([*pyunion_cmd(), "--help"], timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return f"pyunion does not run: {_error(e)}"
    return None


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` in its own session (killed as a group on timeout); raise on failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise subprocess.CalledProcessError(proc.returncode, cmd, out,
                                            lines[-1] if lines else "")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _error(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        return f"{Path(e.cmd[0]).name} exit {e.returncode}: {e.stderr}"
    if isinstance(e, subprocess.TimeoutExpired):
        return f"{Path(e.cmd[0]).name} timed out after {e.timeout:.0f} s"
    return f"{type(e).__name__}: {e}"


def timed(cmd: list[str], timeout: float, **kw: Any) -> tuple[float, float, bytes]:
    """Wall seconds, CPU seconds (user+sys of the whole process tree) and stdout of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = _run(cmd, timeout, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.stdout


def warm(paths: list[Path]) -> None:
    """Read every file below ``paths`` once (the input is in the page cache when timed)."""
    for p in paths:
        files = [p] if p.is_file() else [Path(d) / f for d, _, fs in os.walk(p) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass


def _rmtree(path: Path) -> None:
    if path.exists():
        _assert_nothing_mounted_below(path)
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------
# the distribution image


def _debootstrap(rootfs: Path, log: Log) -> None:
    log(f"debootstrap --variant=minbase bookworm {rootfs} (needs the Debian mirror) ...")
    try:
        _run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], DEBOOTSTRAP_TIMEOUT)
    finally:  # a failed or killed debootstrap can leave proc/sys mounted in the target
        for point in sorted(mounts_below(rootfs), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
    # what `apt-get clean; rm -rf /var/lib/apt/lists/*` do: distribution images ship without
    # the downloaded packages and the 50 MB package lists
    for junk in [*(rootfs / "var/cache/apt/archives").glob("*.deb"),
                 *(rootfs / "var/lib/apt/lists").glob("*_*")]:
        junk.unlink()


def _busybox_rootfs(rootfs: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    for d in ("bin", "etc", "root", "tmp", "usr/bin", "usr/sbin", "sbin", "var/log"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    applets = _run([busybox, "--list-full"], 60).stdout.decode().split()
    for applet in applets:
        link = rootfs / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(rootfs / "bin/busybox", link.parent))
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")


def _package(root: Path, rootfs: Path, log: Log) -> None:
    """``rootfs`` as a one-layer gzip OCI image: ``root/oci`` (layout), ``root/image.oci.tar``."""
    log(f"packaging {rootfs} with umoci ...")
    layout, bundle = root / "oci", root / "bundle"
    image = f"{layout}:{OCI_TAG}"
    _run(["umoci", "init", "--layout", str(layout)], 600)
    _run(["umoci", "new", "--image", image], 600)
    _run(["umoci", "unpack", "--image", image, str(bundle)], 600)
    _run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], 600)
    _run(["umoci", "repack", "--image", image, str(bundle)], 1200)
    _run(["umoci", "gc", "--layout", str(layout)], 600)
    shutil.rmtree(bundle)
    archive = root / "image.oci.tar"
    try:
        _run(["skopeo", "--insecure-policy", "copy", f"oci:{image}",
              f"oci-archive:{archive}:{ARCHIVE_REF}"], 1200)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        log(f"skopeo failed ({_error(e)}): the archive is a tar of the layout instead")
        archive.unlink(missing_ok=True)
        _run(["tar", "-C", str(layout), "-cf", str(archive), "."], 600)


def _describe(root: Path) -> dict[str, Any]:
    """Layer and archive facts for ``meta.json`` (and the sizes that validate the cache)."""
    layout = root / "oci"
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == OCI_TAG)
    manifest = json.loads(_blob(layout, desc["digest"]).read_text())
    (layer,) = manifest["layers"]
    entries = size = 0
    with tarfile.open(_blob(layout, layer["digest"]), "r:gz") as tar:
        for member in tar:
            entries += 1
            size += member.size
    files = {str(p.relative_to(root)): p.stat().st_size
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "meta.json"}
    return {"layer": {"digest": layer["digest"], "media_type": layer["mediaType"],
                      "size": layer["size"], "entries": entries, "content_bytes": size},
            "archive_bytes": (root / "image.oci.tar").stat().st_size, "files": files}


def _blob(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return layout / "blobs" / algo / hexd


def _valid(root: Path) -> dict[str, Any] | None:
    try:
        meta: dict[str, Any] = json.loads((root / "meta.json").read_text())
        if all((root / f).stat().st_size == n for f, n in meta["files"].items()):
            return meta
    except (OSError, ValueError, KeyError):
        pass
    return None


def _build_image(root: Path, source: str, log: Log) -> dict[str, Any]:
    tmp = root.with_name(root.name + ".building")
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    if source == "debootstrap":
        _debootstrap(rootfs, log)
        what = "debian bookworm minbase (debootstrap)"
    else:
        _busybox_rootfs(rootfs)
        what = "busybox-static rootfs"
    _package(tmp, rootfs, log)
    shutil.rmtree(rootfs)
    meta = {"version": VERSION, "source": source, "what": what, "tag": OCI_TAG,
            "ref": ARCHIVE_REF, "built": time.strftime("%Y-%m-%d %H:%M:%S"), **_describe(tmp)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _rmtree(root)
    tmp.rename(root)
    return meta


def ensure_image(cache: Path, log: Log) -> tuple[Path, dict[str, Any]]:
    """The cached distribution image (debootstrap; busybox if that fails) and its meta."""
    base = cache / f"images-v{VERSION}"
    base.mkdir(parents=True, exist_ok=True)
    debian, busybox = base / "debian-bookworm", base / "busybox"
    failed = base / "debootstrap-failed.json"
    meta = _valid(debian)
    if meta:
        return debian, meta
    note = None
    if failed.exists() and time.time() - failed.stat().st_mtime < DEBOOTSTRAP_RETRY_S:
        note = json.loads(failed.read_text())["error"]
    else:
        try:
            meta = _build_image(debian, "debootstrap", log)
            failed.unlink(missing_ok=True)
            return debian, meta
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            note = _error(e)
            failed.write_text(json.dumps({"error": note, "time": time.time()}))
            _rmtree(debian.with_name(debian.name + ".building"))
    log(f"debootstrap failed ({note}): using a busybox-static rootfs instead")
    meta = _valid(busybox) or _build_image(busybox, "busybox", log)
    return busybox, {**meta, "fallback_because": note}


# ---------------------------------------------------------------------------------------------
# load: pyunion vs umoci vs tar


def tree_meta(root: Path) -> dict[str, tuple[Any, ...]]:
    """Path -> (mode, uid, gid, size, mtime, link target, rdev) of each entry below ``root``."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (
                oct(st.st_mode), st.st_uid, st.st_gid, st.st_size if stat.S_ISREG(st.st_mode)
                else 0, int(st.st_mtime), os.readlink(p) if stat.S_ISLNK(st.st_mode) else "",
                st.st_rdev)
    return out


_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
          tarfile.CONTTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
          tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
          tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


def layer_meta(blob: Path) -> dict[str, tuple[Any, ...]]:
    """What ``tree_meta`` must show for a one-layer image: the layer's tar headers.

    (Not GNU tar's result: for a directory whose entries do not all follow it directly, tar
    sets the directory's mtime before it extracts the rest into it.)
    """
    out: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(blob, "r:gz") as tar:
        for m in tar:
            path = os.path.normpath(m.name.lstrip("/"))
            if path == ".":
                continue
            if m.type == tarfile.LNKTYPE:  # same inode as its target
                out[path] = out[os.path.normpath(m.linkname.lstrip("/"))]
                continue
            dev = os.makedev(m.devmajor, m.devminor) if m.ischr() or m.isblk() else 0
            out[path] = (oct(_TYPES[m.type] | m.mode), m.uid, m.gid,
                         m.size if m.isreg() else 0, int(m.mtime),
                         m.linkname if m.issym() else "", dev)
    return out


def compare_trees(got: Path, want: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    a, b = tree_meta(got), want
    missing = sorted(set(b) - set(a))
    extra = sorted(set(a) - set(b))
    differ = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    return {"ok": not (missing or extra or differ), "entries": len(a), "n_missing": len(missing),
            "n_extra": len(extra), "n_differ": len(differ), "missing": missing[:3],
            "extra": extra[:3], "differ": [(p, a[p], b[p]) for p in differ[:3]]}


def _layer_dir(store: Path, timeout: float) -> Path:
    out = _run([*pyunion_cmd(), "--root", str(store), "inspect", ARCHIVE_REF], timeout).stdout
    dirs = json.loads(out)[0]["LayerDirs"]
    return Path(dirs[-1])


def load_sample(tool: str, image: Path, meta: dict[str, Any], cell: Path, timeout: float
                ) -> tuple[dict[str, Any], Path]:
    """One timed load by ``tool`` into the fresh directory ``cell``; returns its rootfs too."""
    cell.mkdir(parents=True)
    layout, archive = image / "oci", image / "image.oci.tar"
    if tool == "pyunion":
        store = cell / "store"
        cmd, inputs = [*pyunion_cmd(), "--root", str(store), "load", "-i", str(archive)], [archive]
    elif tool == "umoci":
        cmd = ["umoci", "unpack", "--image", f"{layout}:{OCI_TAG}", str(cell / "bundle")]
        inputs = [layout]
    else:
        blob = _blob(layout, meta["layer"]["digest"])
        (cell / "rootfs").mkdir()
        cmd, inputs = ["tar", "-xzf", str(blob), "-C", str(cell / "rootfs")], [blob]
    os.sync()  # the previous sample's writeback does not land in this one
    warm(inputs)
    wall, cpu, out = timed(cmd, timeout, cwd=REPO)
    t0 = time.perf_counter()
    os.sync()  # not in the ratio: what writing it all to disk costs on top (pyunion syncs)
    rec = {"tool": tool, "ok": True, "seconds": wall, "cpu_s": cpu,
           "sync_after_s": time.perf_counter() - t0}
    if tool == "pyunion":
        rec["output"] = out.decode(errors="replace").strip()[-200:]
        return rec, _layer_dir(cell / "store", timeout)
    return rec, cell / ("bundle/rootfs" if tool == "umoci" else "rootfs")


def run_load(args: argparse.Namespace, run_dir: Path, log: Log) -> dict[str, Any]:
    try:
        image, meta = ensure_image(args.cache_dir, log)
    except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as e:
        return {"ok": False, "error": f"no image: {_error(e)}", "samples": []}
    lay = meta["layer"]
    log(f"image-load: {meta['what']}, one layer: {lay['size'] / 2**20:.1f} MiB gzip, "
        f"{lay['content_bytes'] / 2**20:.1f} MiB in {lay['entries']} entries")
    samples: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    missing = pyunion_missing()
    skip: dict[str, str] = {"pyunion": missing} if missing else {}
    for rep in range(args.reps):
        shift = rep % len(TOOLS)
        order = TOOLS[shift:] + TOOLS[:shift]
        trees: dict[str, Path] = {}
        cells = []
        try:
            for tool in order:
                cell = run_dir / f"image-load-r{rep}-{tool}"
                cells.append(cell)
                if tool in skip:
                    rec: dict[str, Any] = {"tool": tool, "ok": False, "error": skip[tool]}
                else:
                    try:
                        rec, trees[tool] = load_sample(tool, image, meta, cell, args.timeout)
                    except (OSError, ValueError, LookupError, subprocess.SubprocessError) as e:
                        rec = {"tool": tool, "ok": False, "error": _error(e)}
                        skip[tool] = "skipped: failed in an earlier repetition"
                rec["rep"], rec["loadavg"] = rep, _loadavg()
                samples.append(rec)
                state = f"{rec['seconds']:.3f}s (cpu {rec['cpu_s']:.2f}s)" if rec["ok"] else \
                    "FAILED " + rec["error"]
                log(f"rep {rep + 1}/{args.reps} image-load {tool:8s} {state}")
            if rep == 0 and trees:
                want = layer_meta(_blob(image / "oci", lay["digest"]))
                for tool, tree in trees.items():
                    checks[tool] = compare_trees(tree, want)
                    log(f"  tree check {tool} vs the layer's tar headers: "
                        + _check_text(checks[tool]))
        finally:
            for cell in cells:
                cleanup_cell(cell)
    medians = {}
    for tool in TOOLS:
        times = [s["seconds"] for s in samples if s["tool"] == tool and s["ok"]]
        errors = [s["error"] for s in samples if s["tool"] == tool and not s["ok"]]
        medians[tool] = {"median_s": statistics.median(times) if times else None,
                         "min_s": min(times) if times else None, "n": len(times),
                         "error": errors[0] if errors else None,
                         **{f"{k}_median_s": statistics.median(
                             s[f"{k}_s"] for s in samples if s["tool"] == tool and s["ok"])
                            if times else None for k in ("cpu", "sync_after")}}
    py = medians["pyunion"]["median_s"]
    ok = {(s["rep"], s["tool"]): s["seconds"] for s in samples if s["ok"]}
    for tool in TOOLS:
        other = medians[tool]["median_s"]
        medians[tool]["pyunion_ratio"] = py / other if py is not None and other else None
        # the same ratio within each repetition (samples run back to back): less noisy
        paired = [ok[r, "pyunion"] / ok[r, tool] for r in range(args.reps)
                  if (r, "pyunion") in ok and (r, tool) in ok]
        medians[tool]["pyunion_ratio_per_rep_median"] = \
            statistics.median(paired) if paired else None
    image_info = {k: meta[k] for k in ("what", "source", "layer", "archive_bytes", "built")}
    if meta.get("fallback_because"):
        image_info["fallback_because"] = meta["fallback_because"]
    return {"ok": True, "image": image_info, "cache": str(image), "tools": medians,
            "tree_checks": checks, "samples": samples}


def _check_text(c: dict[str, Any]) -> str:
    if c["ok"]:
        return f"same tree ({c['entries']} entries)"
    return (f"DIFFERENT: {c['n_missing']} missing {c['missing'][:1]}, {c['n_extra']} extra "
            f"{c['extra'][:1]}, {c['n_differ']} differ (mode uid gid size mtime target rdev: "
            f"got, want) {c['differ'][:1]}")


# ---------------------------------------------------------------------------------------------
# a store of 1,000 images


def _name(i: int) -> str:
    return f"bench/img{i:04d}:v1"


def _layer_tar(i: int) -> bytes:
    """A tiny rootfs: ``etc/`` and ``etc/bench-image`` with the image's number."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("etc", "bin"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        data = f"bench image {i}\n".encode()
        info = tarfile.TarInfo("etc/bench-image")
        info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000 + i
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _add_blob(tar: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def build_many(path: Path, n: int) -> None:
    """An OCI archive of ``n`` distinct one-layer images, named as ``docker save`` (25+) does."""
    tmp = path.with_name(path.name + ".building")
    manifests = []
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for i in range(1, n + 1):
            raw = _layer_tar(i)
            layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     **_add_blob(tar, gzip.compress(raw, mtime=0))}
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + 60 * i))
            config = {"created": created, "architecture": "amd64", "os": "linux",
                      "config": {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers",
                                 "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
                      "history": [{"created": created, "created_by": f"bench image {i}"}]}
            cfg = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_add_blob(tar, json.dumps(config).encode())}
            manifest = {"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": cfg, "layers": [layer]}
            desc = _add_blob(tar, json.dumps(manifest).encode())
            manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **desc,
                              "annotations": {"io.containerd.image.name":
                                              "docker.io/" + _name(i),
                                              "org.opencontainers.image.ref.name": "v1"}})
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps({"schemaVersion": 2,
                                                      "manifests": manifests}).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def _source_key() -> str:
    h = hashlib.sha256(f"v{VERSION} n{N_IMAGES}".encode())
    for p in sorted((REPO / "unionfs" / "image").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def _count(store: Path, timeout: float) -> int:
    out = _run([*pyunion_cmd(), "--root", str(store), "images", "-q"], timeout).stdout
    return len(out.split())


def _import_one(store: Path, i: int, timeout: float) -> None:
    r = subprocess.run([*pyunion_cmd(), "--root", str(store), "import", "-", _name(i)],
                       input=_layer_tar(i), capture_output=True, timeout=timeout)
    if r.returncode != 0:
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout,
                                            lines[-1] if lines else "")


def _import_all(store: Path, n: int, timeout: float) -> None:
    """``n`` x ``pyunion import - NAME`` (the tiny rootfs tar on stdin), 2 at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_import_one, store, i, timeout) for i in range(1, n + 1)]
        try:
            for f in futures:
                f.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def ensure_store(cache: Path, timeout: float, log: Log) -> tuple[Path, dict[str, Any]]:
    """The cached store of N_IMAGES images made by the current ``unionfs/image`` code."""
    base = cache / f"images-v{VERSION}"
    base.mkdir(parents=True, exist_ok=True)
    store = base / f"store-{N_IMAGES}-{_source_key()}"
    meta_path = store.with_name(store.name + ".json")
    if meta_path.exists() and store.is_dir():
        return store, json.loads(meta_path.read_text())
    for old in base.glob(f"store-{N_IMAGES}-*"):  # made by other versions of the code
        if old.is_dir():
            _rmtree(old)
        else:
            old.unlink()
    archive = base / f"many-{N_IMAGES}.oci.tar"
    if not archive.exists():
        build_many(archive, N_IMAGES)
    tmp = store.with_name(store.name + ".building")
    log(f"building a store of {N_IMAGES} images: pyunion load -i {archive.name} ...")
    t0 = time.perf_counter()
    try:
        _run([*pyunion_cmd(), "--root", str(tmp), "load", "-q", "-i", str(archive)], timeout)
        method = f"one `pyunion load` of an OCI archive of {N_IMAGES} images"
    except (subprocess.SubprocessError, OSError) as e:
        log(f"  that failed ({_error(e)}); {N_IMAGES} x pyunion import, 2 processes ...")
        _rmtree(tmp)
        t0 = time.perf_counter()
        _import_all(tmp, N_IMAGES, timeout)
        method = f"{N_IMAGES} x `pyunion import` (2 processes); load failed: {_error(e)}"
    seconds = time.perf_counter() - t0
    count = _count(tmp, timeout)
    if count != N_IMAGES:
        raise RuntimeError(f"the store has {count} images, not {N_IMAGES}")
    tmp.rename(store)
    meta = {"method": method, "seconds": round(seconds, 2), "images": N_IMAGES,
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta_path.write_text(json.dumps(meta))
    log(f"  built in {seconds:.1f} s")
    return store, meta


def store_commands(store: Path, k: int) -> list[tuple[str, list[str]]]:
    """Round ``k``'s commands: (row name, argv)."""
    py = [*pyunion_cmd(), "--root", str(store)]
    victim = _name(1 + (k + 1) * N_IMAGES // (STORE_ROUNDS + 1))  # never N_IMAGES // 2
    return [("python: import the CLI (floor)", [sys.executable, "-c", "import unionfs.image.cli"]),
            ("pyunion images", [*py, "images"]),
            ("pyunion inspect IMAGE", [*py, "inspect", _name(N_IMAGES // 2)]),
            ("pyunion tag IMAGE NEW", [*py, "tag", _name(N_IMAGES // 2), f"bench/copy:{k}"]),
            ("pyunion rmi IMAGE", [*py, "rmi", victim])]


def run_store(args: argparse.Namespace, run_dir: Path, log: Log) -> dict[str, Any]:
    missing = pyunion_missing()
    if missing:
        return {"ok": False, "error": missing, "rows": {}}
    try:
        cached, meta = ensure_store(args.cache_dir, args.timeout, log)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        return {"ok": False, "error": f"no store: {_error(e)}", "rows": {}}
    store = run_dir / "image-store"
    try:
        _run(["cp", "-a", str(cached), str(store)], 600)
        n = _count(store, args.timeout)  # also the warm-up (bytecode, page cache)
        samples: dict[str, list[float]] = {}
        errors: dict[str, str] = {}
        for k in range(STORE_ROUNDS):
            for row, cmd in store_commands(store, k):
                if row in errors:
                    continue
                try:
                    wall, _, out = timed(cmd, args.timeout)
                    samples.setdefault(row, []).append(wall)
                    if row == "pyunion images" and len(out.splitlines()) < N_IMAGES:
                        errors[row] = f"listed {len(out.splitlines())} lines"
                except (OSError, subprocess.SubprocessError) as e:
                    errors[row] = _error(e)
            log(f"round {k + 1}/{STORE_ROUNDS} image-store " + "  ".join(
                f"{row.split()[1]} {samples[row][-1]:.3f}s" if row not in errors else
                f"{row.split()[1]} FAILED" for row, _ in store_commands(store, k)))
    except (OSError, subprocess.SubprocessError) as e:
        return {"ok": False, "error": _error(e), "build": meta, "rows": {}}
    finally:
        cleanup_cell(store)
    rows = {row: {"median_s": statistics.median(s) if s else None, "n": len(s),
                  "samples_s": s, "error": errors.get(row)}
            for row, s in ((r, samples.get(r, [])) for r, _ in store_commands(store, 0))}
    return {"ok": True, "build": meta, "images_in_store": n, "rows": rows}


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    """The selected rows (``image-load``, ``image-store``); ``args``: reps, timeout, cache_dir."""
    out: dict[str, Any] = {"pyunion": " ".join(pyunion_cmd()), "loadavg": [_loadavg()]}
    if LOAD in names:
        out[LOAD] = run_load(args, run_dir, log)
    if STORE in names:
        out[STORE] = run_store(args, run_dir, log)
    out["loadavg"].append(_loadavg())
    return out


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _verdict(value: float | None, target: float, inclusive: bool) -> str:
    if value is None:
        return ""
    return "ok" if (value <= target if inclusive else value < target) else "MISSED"


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"image manager rows: load average {res['loadavg'][0]} before, "
           f"{res['loadavg'][-1]} after (other work on the machine shows up in these numbers)"]
    load = res.get(LOAD)
    if load:
        out += ["", "image load (end to end, pyunion's Python start included; seconds):"]
        if not load["ok"]:
            out.append(f"  FAILED: {load['error']}")
        else:
            img, lay = load["image"], load["image"]["layer"]
            out.append(f"{img['what']}: 1 gzip layer {lay['size'] / 2**20:.1f} MiB, "
                       f"{lay['content_bytes'] / 2**20:.1f} MiB in {lay['entries']} entries; "
                       "input in page cache, each into a fresh empty directory")
            if img.get("fallback_because"):
                out.append(f"NOTE: not Debian: debootstrap failed ({img['fallback_because']}), "
                           "so this is a busybox-static rootfs")
            t = load["tools"]
            labels = {"pyunion": "pyunion load -i oci-archive", "umoci": "umoci unpack",
                      "tar": "tar -xzf layer (floor)"}
            rows = []
            for tool in TOOLS:
                v = t[tool]
                ratio = v["pyunion_ratio"] if tool != "pyunion" else None
                target = TARGETS.get(tool)
                paired = v.get("pyunion_ratio_per_rep_median")
                rows.append([labels[tool], _fmt(v["median_s"], ".3f"),
                             _fmt(v.get("min_s"), ".3f"),
                             _fmt(v["cpu_median_s"], ".2f") if v["n"] else "-", str(v["n"]),
                             _fmt(ratio, ".2f") if tool != "pyunion" else "",
                             _fmt(paired, ".2f") if tool != "pyunion" else "",
                             f"<= {target}" if target else "",
                             _verdict(ratio, target, True) if target else ""])
            out.append(_table(["command", "median", "min", "cpu s", "n", "pyunion/this",
                               "per rep", "target", ""], rows))
            sync = ", ".join(f"{tool} {_fmt(t[tool]['sync_after_median_s'], '.2f')} s"
                             for tool in TOOLS[1:] if t[tool]["n"])
            out.append("  cpu s: user+sys of the command's processes (median); pyunion/this: "
                       "ratio of the medians; per rep: median of the ratios within each "
                       "repetition (its samples run back to back)")
            out.append("  pyunion syncs its store before it returns, umoci and tar do not: a "
                       f"`sync` right after them took {sync or '-'} (median, not in the ratios)")
            for tool in TOOLS:
                if t[tool]["error"]:
                    out.append(f"  failed: {tool}: {t[tool]['error']}")
            for tool, c in load["tree_checks"].items():
                out.append(f"  {tool}'s tree vs the layer's tar headers: {_check_text(c)}")
                if tool == "tar" and c["n_differ"] and not c["n_missing"] + c["n_extra"]:
                    out.append("    (GNU tar sets a directory's mtime when the next entry is "
                               "outside it, before later entries land in it: a tar quirk)")
    store = res.get(STORE)
    if store:
        out += ["", f"store of {N_IMAGES} one-layer images (end to end, Python start included; "
                f"median of {STORE_ROUNDS}):"]
        if store.get("build"):
            b = store["build"]
            out.append(f"store built {b['built']} by {b['method']} in {b['seconds']:.1f} s")
        if not store["ok"]:
            out.append(f"  FAILED: {store['error']}")
        else:
            rows = []
            for row, v in store["rows"].items():
                floor = "floor" in row
                rows.append([row, _fmt(v["median_s"], ".3f"), str(v["n"]),
                             "" if floor else f"< {STORE_TARGET_S}",
                             "" if floor else _verdict(v["median_s"], STORE_TARGET_S, False)])
            out.append(_table(["command", "seconds", "n", "target", ""], rows))
            for row, v in store["rows"].items():
                if v["error"]:
                    out.append(f"  failed: {row}: {v['error']}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args(
        "images", __doc__, NAMES, argv, quick_help="1 repetition of the load rows",
        reps_help="load repetitions (default 3; --quick: 1)",
        root_because="debootstrap, umoci unpack and the store need it")
    res = standalone.run_in_fresh_dir(args, run)
    return standalone.report(args, "image benchmark", "images", res, render)

if __name__ == "__main__":
    sys.exit(main())
