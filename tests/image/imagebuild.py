"""Real container images for the image-manager tests, built from local files.

``ImageSet`` builds a small family of images with umoci (``init``, ``new``, ``unpack``,
``repack``, ``config``, ``raw add-layer``) in one OCI layout, and packages them on demand with
skopeo (OCI layout, OCI archive, docker-archive, zstd layers, Docker media types). Only what no
tool here writes is made in Python: the legacy ``docker save`` archive, a layout with
uncompressed layers, the multi-platform index, and the hand-made layers (PAX tars) that need an
opaque directory, nanosecond mtimes or a directory replaced over a file - ``umoci repack`` emits
per-file whiteouts only, rounds mtimes to seconds, and ``umoci insert`` 0.4.7 writes truncated
tars.

The images (tag in the build layout -> name):

* ``base`` -> ``busybox:latest``: busybox-static with applet symlinks, /etc/passwd and group,
  directories with several owners and modes (0700, 1777, 02775, 0711), a file owned by nobody.
* ``app`` -> ``app:2.0``: base + layer A (``umoci repack``: overridden files, whiteout of a file
  and of a directory, hard links in two dirs, user.* xattrs on a file and a dir, setuid/setgid
  files, a sticky dir, a fifo, symlinks (relative, absolute, dangling), files of uid 1000/1001,
  a dir replaced by a file, a dir's mode changed) + layer B (PAX tar: an opaque directory whose
  marker comes after its new siblings, sub-second and nanosecond mtimes, a dir over layer A's
  file) + a config step (Cmd, Env, WorkingDir; an ``empty_layer`` history entry).
* ``app-v2`` -> ``app:2.0`` as well: same layers as ``app``, another config (a newer build).
* ``tools`` -> ``tools:1.0``: base + one small layer (shares the base layer with ``app``).
* ``quirks`` -> ``quirks:1``: base + what ``umoci repack`` writes for a dir replaced by a file
  (the file, then a whiteout *below* it, which a consumer must tolerate) + a dir over that file.
* ``amd64`` / ``arm64``: base + a layer writing /etc/arch; arm64's config says arm64. Combined
  by ``multi_platform()`` into one index named ``multi:1.0``.

The oracle for every rootfs is ``umoci unpack`` (``reference_rootfs``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xattr

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "id", "true", "false", "echo", "env", "mkdir", "rm", "stat",
           "touch", "ln", "readlink", "sleep", "test", "find", "grep", "head", "wc")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

# build-layout tag -> the name the packaged image carries
NAMES = {
    "base": "busybox:latest",
    "app": "app:2.0",
    "app-v2": "app:2.0",
    "tools": "tools:1.0",
    "amd64": "multi:1.0",
    "arm64": "multi:1.0",
    "quirks": "quirks:1",
}
FORMATS = ("oci-dir", "oci-archive", "docker-archive", "legacy-archive", "zstd",
           "uncompressed", "docker-media")

# history created_by of every step, oldest first (checked by the history tests)
BASE_STEPS = ("base: busybox rootfs", "base: config")
APP_STEPS = (*BASE_STEPS, "app: files, links, whiteouts", "app: opaque dir, sub-second mtimes",
             "app: config")
TOOLS_STEPS = (*BASE_STEPS, "tools: add tool", "tools: config")
APP_CMD = ["/bin/sh", "-c", "cat /etc/motd"]
APP_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "APP_MODE=test"]
APP_WORKDIR = "/data"
FIXED_MTIME = 1_700_000_000


def run(cmd: Iterable[Any], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a build tool; raise with its stderr if it fails."""
    args = [str(c) for c in cmd]
    result = subprocess.run(args, capture_output=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {err}")
    return result


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: os.PathLike | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- layer tars


class LayerTar:
    """A layer tar written entry by entry (PAX format), for hand-made and hostile layers.

    ``mtime`` may be an int or a decimal string ("1650000000.123456789"): strings go into the
    PAX ``mtime`` record verbatim, so nanoseconds survive (a float would not).
    """

    def __init__(self, fmt: int = tarfile.PAX_FORMAT):
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=fmt)

    def _info(self, name: str, type_: bytes, mode: int, uid: int, gid: int,
              mtime: int | str, xattrs: dict[str, str] | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        pax: dict[str, str] = {}
        if isinstance(mtime, str):
            ti.mtime = int(mtime.split(".")[0])
            pax["mtime"] = mtime
        else:
            ti.mtime = mtime
        for key, value in (xattrs or {}).items():
            pax[f"SCHILY.xattr.{key}"] = value
        ti.pax_headers = pax
        return ti

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
            mtime: int | str = FIXED_MTIME, xattrs: dict[str, str] | None = None) -> LayerTar:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid, mtime, xattrs))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: int | str = FIXED_MTIME, xattrs: dict[str, str] | None = None) -> LayerTar:
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime, xattrs)
        ti.size = len(data)
        self._tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, uid: int = 0, gid: int = 0) -> LayerTar:
        ti = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid, FIXED_MTIME, None)
        ti.linkname = target
        self._tar.addfile(ti)
        return self

    def hardlink(self, name: str, target: str) -> LayerTar:
        ti = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0, FIXED_MTIME, None)
        ti.linkname = target
        self._tar.addfile(ti)
        return self

    def fifo(self, name: str, mode: int = 0o644) -> LayerTar:
        self._tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, 0, 0, FIXED_MTIME, None))
        return self

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> LayerTar:
        ti = self._info(name, tarfile.CHRTYPE, mode, 0, 0, FIXED_MTIME, None)
        ti.devmajor, ti.devminor = major, minor
        self._tar.addfile(ti)
        return self

    def whiteout(self, path: str) -> LayerTar:
        parent, _, name = path.rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0)

    def opaque(self, dirpath: str) -> LayerTar:
        return self.file(f"{dirpath}/.wh..wh..opq", mode=0)

    def raw(self, info: tarfile.TarInfo, data: bytes | None = None) -> LayerTar:
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    return run(["zstd", "-q", "-c", "-"], input=data).stdout


# --------------------------------------------------------------------------- OCI layouts


@dataclass
class Layer:
    """One layer blob as stored, with its media type and DiffID (sha256 of the plain tar)."""

    blob: bytes
    media_type: str = OCI_LAYER_GZIP
    diff_id: str = ""

    @classmethod
    def of(cls, tar: bytes, compression: str = "gzip") -> Layer:
        if compression == "gzip":
            return cls(gzip_bytes(tar), OCI_LAYER_GZIP, "sha256:" + sha256_hex(tar))
        if compression == "zstd":
            return cls(zstd_bytes(tar), OCI_LAYER_ZSTD, "sha256:" + sha256_hex(tar))
        return cls(tar, OCI_LAYER, "sha256:" + sha256_hex(tar))


def minimal_config(diff_ids: list[str], *, arch: str = "amd64", extra: dict | None = None,
                   created_by: str = "test layer") -> dict[str, Any]:
    """An image config for a crafted image (no tool writes one for arbitrary layer tars)."""
    cfg: dict[str, Any] = {
        "created": "2024-01-02T03:04:05Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": f"{created_by} {i}"}
                    for i in range(len(diff_ids))],
    }
    if extra:
        cfg.update(extra)
    return cfg


def write_blob(layout: Path, data: bytes) -> str:
    """Store ``data`` in ``layout``'s blobs; returns its digest ``sha256:<hex>``."""
    hexd = sha256_hex(data)
    path = layout / "blobs" / "sha256" / hexd
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return "sha256:" + hexd


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def descriptor(media_type: str, digest: str, size: int, **extra) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def write_oci_layout(layout: Path, layers: list[Layer], config: dict | bytes, *,
                     ref_name: str | None = None, annotations: dict | None = None,
                     manifest_extra: dict | None = None) -> dict[str, Any]:
    """A one-image OCI layout (creating or adding to ``layout``); returns the descriptor."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    cfg = config if isinstance(config, bytes) else json_bytes(config)
    cfg_digest = write_blob(layout, cfg)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, cfg_digest, len(cfg)),
        "layers": [descriptor(la.media_type, write_blob(layout, la.blob), len(la.blob))
                   for la in layers],
    }
    if manifest_extra:
        manifest.update(manifest_extra)
    raw = json_bytes(manifest)
    annotations = dict(annotations or {})
    if ref_name is not None:
        annotations[REF_NAME] = ref_name
    desc = descriptor(OCI_MANIFEST, write_blob(layout, raw), len(raw))
    if annotations:
        desc["annotations"] = annotations
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {
        "schemaVersion": 2, "manifests": []}
    index["manifests"].append(desc)
    index_path.write_text(json.dumps(index))
    return desc


def read_index(layout: Path) -> dict[str, Any]:
    return json.loads((layout / "index.json").read_text())


def manifest_descriptor(layout: Path, ref_name: str | None = None) -> dict[str, Any]:
    """The index.json entry named ``ref_name`` (or the only entry)."""
    entries = read_index(layout)["manifests"]
    if ref_name is None:
        assert len(entries) == 1, f"{layout} holds {len(entries)} manifests"
        return entries[0]
    for entry in entries:
        if entry.get("annotations", {}).get(REF_NAME) == ref_name:
            return entry
    raise KeyError(f"no {ref_name!r} in {layout}/index.json")


def read_blob_json(layout: Path, digest: str) -> dict[str, Any]:
    return json.loads(blob_path(layout, digest).read_bytes())


def layer_tar_bytes(layout: Path, desc: dict[str, Any]) -> bytes:
    """The uncompressed tar of the layer ``desc`` in ``layout``."""
    data = blob_path(layout, desc["digest"]).read_bytes()
    media = desc["mediaType"]
    if media.endswith("gzip"):
        return gzip.decompress(data)
    if media.endswith("zstd"):
        return run(["zstd", "-q", "-d", "-c", "-"], input=data).stdout
    return data


def rewrite_manifest(layout: Path, fn: Callable[[dict, Path], dict],
                     ref_name: str | None = None) -> dict[str, Any]:
    """Replace the manifest of one index entry by ``fn(manifest, layout)``; returns the new one.

    The index entry keeps its annotations; only digest and size change. Old blobs stay.
    """
    index = read_index(layout)
    old = manifest_descriptor(layout, ref_name)
    manifest = fn(read_blob_json(layout, old["digest"]), layout)
    raw = json_bytes(manifest)
    new = dict(old, digest=write_blob(layout, raw), size=len(raw))
    index["manifests"] = [new if e == old else e for e in index["manifests"]]
    (layout / "index.json").write_text(json.dumps(index))
    return manifest


def write_legacy_archive(path: Path, config: bytes, layer_tars: list[bytes],
                         repo_tags: list[str] | None) -> Path:
    """A ``docker save`` archive in the pre-25 shape, built from a config and plain layer tars.

    ``<v1id>/{layer.tar,json,VERSION}`` per layer, ``<confighex>.json``, ``manifest.json``
    (``Config``, ``RepoTags``, ``Layers``) and ``repositories`` (``{repo: {tag: top v1 id}}``).
    No tool here writes this shape, so it is made by the test itself.
    """
    members: list[tuple[str, bytes | None]] = []
    cfg_hex = sha256_hex(config)
    parent = ""
    layer_paths = []
    for tar in layer_tars:
        v1id = sha256_hex(f"{parent} sha256:{sha256_hex(tar)}".encode())
        v1json: dict[str, Any] = {"id": v1id, "created": "1970-01-01T00:00:00Z",
                                  "container_config": {"Cmd": None}}
        if parent:
            v1json["parent"] = parent
        members += [(f"{v1id}/", None), (f"{v1id}/VERSION", b"1.0"),
                    (f"{v1id}/json", json_bytes(v1json)), (f"{v1id}/layer.tar", tar)]
        layer_paths.append(f"{v1id}/layer.tar")
        parent = v1id
    members.append((f"{cfg_hex}.json", config))
    manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": repo_tags, "Layers": layer_paths}]
    members.append(("manifest.json", json_bytes(manifest)))
    if repo_tags:
        repos: dict[str, dict[str, str]] = {}
        for ref in repo_tags:
            repo, _, tag = ref.rpartition(":")
            repos.setdefault(repo, {})[tag] = parent
        members.append(("repositories", json_bytes(repos)))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for name, data in members:
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = 0
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                out.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                out.addfile(ti, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- rootfs contents


def _mkdir(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown: chown clears set-id bits
    return path


def _write(path: Path, data: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def populate_base(root: Path) -> None:
    """A busybox-static rootfs with a few owners and modes."""
    for d, mode, uid, gid in [("bin", 0o755, 0, 0), ("usr/bin", 0o755, 0, 0),
                              ("etc", 0o755, 0, 0), ("root", 0o700, 0, 0),
                              ("tmp", 0o1777, 0, 0), ("home/user", 0o700, 1000, 1000),
                              ("srv/shared", 0o2775, 0, 100), ("var/lib/empty", 0o711, 0, 0),
                              ("var/cache/old", 0o755, 0, 0), ("opt/data/sub", 0o755, 0, 0),
                              ("etc/gone/sub", 0o750, 0, 0), ("dev", 0o755, 0, 0)]:
        _mkdir(root / d, mode, uid, gid)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    os.symlink("../../bin/busybox", root / "usr/bin/env")
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
           "user:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    _write(root / "etc/group", "root:x:0:\nusers:x:100:\nuser:x:1000:\nnogroup:x:65534:\n")
    _write(root / "etc/hostname", "base\n")
    _write(root / "etc/removeme", "removed by the app layer\n")
    _write(root / "etc/gone/g", "gone\n")
    _write(root / "etc/gone/sub/f", "gone too\n", 0o600)
    _write(root / "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640, 0, 42)
    _write(root / "home/user/.profile", "export PS1='$ '\n", 0o600, 1000, 1000)
    _write(root / "var/lib/nobody.dat", "nobody's\n", 0o400, 65534, 65534)
    _write(root / "var/cache/old/x", "cached\n")
    _write(root / "srv/shared/readme", "shared\n", 0o664, 0, 100)
    _write(root / "opt/data/old1", "old one\n")
    _write(root / "opt/data/sub/deep", "old deep\n")


def modify_app(root: Path) -> None:
    """The app's first layer, as changes to an unpacked base bundle (``umoci repack`` diffs)."""
    with open(root / "etc/passwd", "a") as f:
        f.write("app:x:1001:1002:app:/data:/bin/sh\n")
    _write(root / "etc/hostname", "app\n")
    _write(root / "etc/motd", "welcome to app 2.0\n")
    (root / "etc/removeme").unlink()
    shutil.rmtree(root / "etc/gone")
    data = _mkdir(root / "data", 0o755)
    xattr.setxattr(data, "user.dirnote", b"on-a-dir")
    _write(data / "h1", "one file, three names\n", 0o644, 1000, 1000)
    _mkdir(data / "sub")
    os.link(data / "h1", data / "h2")
    os.link(data / "h1", data / "sub/h3")
    xattr.setxattr(data / "h1", "user.foo", b"bar")
    xattr.setxattr(data / "h1", "user.checksum", b"sha256=feedface")
    _write(data / "suid", "#!/bin/sh\nid\n", 0o4755, 1001, 1002)
    _write(data / "sgid", "#!/bin/sh\nid -g\n", 0o2711, 0, 100)
    _mkdir(data / "dropbox", 0o1733, 1001, 1002)
    os.mkfifo(data / "fifo", 0o640)
    os.chown(data / "fifo", 1000, 1000)
    os.symlink("../etc/motd", data / "link")
    os.symlink("/bin/busybox", data / "abslink")
    os.symlink("does/not/exist", data / "dangling")
    os.lchown(data / "link", 1000, 1000)
    _write(root / "home/user/notes", "notes\n", 0o640, 1000, 1000)
    os.chmod(root / "srv/shared", 0o750)


def app_layer_b() -> bytes:
    """Opaque dir (marker after its new siblings), ns mtimes, a dir's attributes replaced."""
    t = LayerTar()
    t.dir("opt").dir("opt/data", 0o775, 0, 100, mtime="1650000000.75")
    t.file("opt/data/fresh", b"fresh content\n", mtime="1650000000.5")
    t.dir("opt/data/nested").file("opt/data/nested/f", b"nested\n", 0o600, 1000, 1000)
    t.opaque("opt/data")
    t.dir("srv", mtime="1650000000.5")
    t.dir("srv/subsec", 0o755, mtime="1650000000.5")
    t.file("srv/subsec/quarter", b"q\n", mtime="1650000000.25")
    t.file("srv/subsec/nanos", b"n\n", mtime="1650000000.123456789")
    t.file("srv/subsec/old", b"before 1970? no, 1973\n", mtime="100000000.000000001")
    t.dir("var").dir("var/cache", 0o700).file("var/cache/new", b"dir again\n")
    return t.bytes()


# --------------------------------------------------------------------------- the image set


@dataclass
class ImageFacts:
    """What the build layout says about one image (the oracle for inspect and save)."""

    tag: str
    name: str
    manifest_digest: str
    manifest: dict[str, Any]
    config_bytes: bytes
    config: dict[str, Any] = field(repr=False)

    @property
    def image_id(self) -> str:
        return "sha256:" + sha256_hex(self.config_bytes)

    @property
    def short_id(self) -> str:
        return self.image_id[7:19]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])


class ImageSet:
    """The images above, built once into ``root/layout``; packages and unpacks made on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.layout = root / "layout"
        self._cache: dict[tuple, Path] = {}
        self.build_seconds = 0.0
        start = time.monotonic()
        self._build()
        self.build_seconds = time.monotonic() - start

    # ----------------------------------------------------------------- build

    def _umoci(self, *args: Any) -> None:
        run(["umoci", *args])

    def _bundle(self, tag: str, name: str) -> Path:
        bundle = self.root / "bundles" / name
        self._umoci("unpack", "--image", f"{self.layout}:{tag}", bundle)
        return bundle

    def _repack(self, bundle: Path, tag: str, created_by: str) -> None:
        self._umoci("repack", "--image", f"{self.layout}:{tag}",
                    "--history.created_by", created_by, bundle)
        shutil.rmtree(bundle)

    def _config(self, tag: str, created_by: str, *opts: str, new_tag: str | None = None) -> None:
        extra = ["--tag", new_tag] if new_tag else []
        self._umoci("config", "--image", f"{self.layout}:{tag}", *extra,
                    "--history.created_by", created_by, *opts)

    def _build(self) -> None:
        lay = self.layout
        self._umoci("init", "--layout", lay)
        self._umoci("new", "--image", f"{lay}:base")
        bundle = self._bundle("base", "base")
        populate_base(bundle / "rootfs")
        self._repack(bundle, "base", BASE_STEPS[0])
        self._config("base", BASE_STEPS[1], "--config.cmd", "/bin/sh",
                     "--config.env", APP_ENV[0])

        bundle = self._bundle("base", "app")
        modify_app(bundle / "rootfs")
        self._repack(bundle, "app", APP_STEPS[2])
        layer_b = self.root / "app-layer-b.tar"
        layer_b.write_bytes(app_layer_b())
        self._umoci("raw", "add-layer", "--image", f"{lay}:app",
                    "--history.created_by", APP_STEPS[3], layer_b)
        cmd = [x for part in APP_CMD for x in ("--config.cmd", part)]
        self._config("app", APP_STEPS[4], *cmd, "--config.env", APP_ENV[1],
                     "--config.workingdir", APP_WORKDIR, "--config.label", "org.test.app=yes",
                     "--author", "image tests")
        self._config("app", "app v2: config", "--config.env", "APP_BUILD=2", new_tag="app-v2")

        bundle = self._bundle("base", "tools")
        _write(bundle / "rootfs/usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755)
        _write(bundle / "rootfs/etc/tools.conf", "verbose=1\n", 0o600, 1000, 1000)
        self._repack(bundle, "tools", TOOLS_STEPS[2])
        self._config("tools", TOOLS_STEPS[3], "--config.cmd", "/usr/bin/tool")

        # umoci repack of "dir replaced by a file" writes var/cache (a file) and then
        # var/cache/.wh.old below it: a whiteout whose parent is no longer a directory.
        bundle = self._bundle("base", "quirks")
        shutil.rmtree(bundle / "rootfs/var/cache")
        _write(bundle / "rootfs/var/cache", "a file where a dir was\n")
        self._repack(bundle, "quirks", "quirks: dir replaced by a file")
        layer = self.root / "quirks-layer.tar"
        layer.write_bytes(LayerTar().dir("var").dir("var/cache", 0o700)
                          .file("var/cache/new", b"a dir again\n").bytes())
        self._umoci("raw", "add-layer", "--image", f"{lay}:quirks",
                    "--history.created_by", "quirks: dir over the file", layer)

        for arch in ("amd64", "arm64"):
            bundle = self._bundle("base", arch)
            _write(bundle / "rootfs/etc/arch", f"{arch}\n")
            self._repack(bundle, arch, f"{arch}: arch file")
            self._config(arch, f"{arch}: config", "--architecture", arch)

    # ----------------------------------------------------------------- facts

    def facts(self, tag: str) -> ImageFacts:
        desc = manifest_descriptor(self.layout, tag)
        manifest = read_blob_json(self.layout, desc["digest"])
        cfg = blob_path(self.layout, manifest["config"]["digest"]).read_bytes()
        return ImageFacts(tag, NAMES[tag], desc["digest"], manifest, cfg, json.loads(cfg))

    def layer_tars(self, tag: str) -> list[bytes]:
        """The uncompressed layer tars of ``tag``, base first."""
        manifest = self.facts(tag).manifest
        return [layer_tar_bytes(self.layout, d) for d in manifest["layers"]]

    # ----------------------------------------------------------------- packages

    def _skopeo(self, *args: Any) -> None:
        run(["skopeo", "--insecure-policy", "copy", "-q", *args])

    def package(self, tag: str, fmt: str = "oci-dir") -> Path:
        """``tag`` packaged as ``fmt`` (one of FORMATS), named ``NAMES[tag]``; cached."""
        key = ("package", tag, fmt)
        if key in self._cache:
            return self._cache[key]
        name = NAMES[tag]
        src = f"oci:{self.layout}:{tag}"
        out = self.root / "packages" / tag / fmt
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "oci-dir":
            self._skopeo(src, f"oci:{out}:{name}")
        elif fmt == "oci-archive":
            out = out.with_suffix(".tar")
            self._skopeo(src, f"oci-archive:{out}:{name}")
        elif fmt == "docker-archive":
            out = out.with_suffix(".tar")
            self._skopeo(src, f"docker-archive:{out}:{name}")
        elif fmt == "legacy-archive":
            out = out.with_suffix(".tar")
            write_legacy_archive(out, self.facts(tag).config_bytes, self.layer_tars(tag),
                                 [name])
        elif fmt == "zstd":
            self._skopeo("--dest-compress-format", "zstd", src, f"oci:{out}:{name}")
        elif fmt == "docker-media":
            self._skopeo("--format", "v2s2", src, f"oci:{out}:{name}")
        elif fmt == "uncompressed":
            shutil.copytree(self.package(tag, "oci-dir"), out)
            rewrite_manifest(out, _decompress_layers, name)
        else:
            raise ValueError(f"unknown format {fmt}")
        self._cache[key] = out
        return out

    def renamed_layout(self, tag: str, annotations: dict[str, str], stem: str) -> Path:
        """A copy of ``tag``'s OCI layout whose index entry carries exactly ``annotations``."""
        out = self.root / "renamed" / stem
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(self.package(tag, "oci-dir"), out)
        index = read_index(out)
        index["manifests"][0]["annotations"] = dict(annotations)
        if not annotations:
            del index["manifests"][0]["annotations"]
        (out / "index.json").write_text(json.dumps(index))
        return out

    def multi_platform(self) -> Path:
        """An OCI layout whose entry ``multi:1.0`` is an index: arm64/v8 then amd64.

        It starts with an ``unknown/unknown`` attestation-style entry (which a loader must skip)
        and lists arm64 before amd64, so "the first entry" is never the right default.
        """
        key = ("multi",)
        if key in self._cache:
            return self._cache[key]
        out = self.root / "packages" / "multi"
        descs = {}
        for arch in ("amd64", "arm64"):
            self._skopeo(f"oci:{self.layout}:{arch}", f"oci:{out}:tmp-{arch}")
            descs[arch] = manifest_descriptor(out, f"tmp-{arch}")
        entries = [
            descriptor(OCI_MANIFEST, descs["arm64"]["digest"], descs["arm64"]["size"],
                       platform={"architecture": "unknown", "os": "unknown"},
                       annotations={"vnd.docker.reference.type": "attestation-manifest"}),
            descriptor(OCI_MANIFEST, descs["arm64"]["digest"], descs["arm64"]["size"],
                       platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
            descriptor(OCI_MANIFEST, descs["amd64"]["digest"], descs["amd64"]["size"],
                       platform={"architecture": "amd64", "os": "linux"}),
        ]
        raw = json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        top = descriptor(OCI_INDEX, write_blob(out, raw), len(raw),
                         annotations={REF_NAME: "multi:1.0"})
        (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
        # skopeo as a check of the hand-made index: it must resolve arm64 through it
        got = json.loads(run(["skopeo", "--override-arch", "arm64", "inspect",
                              f"oci:{out}:multi:1.0"]).stdout)
        assert got["Architecture"] == "arm64", got
        self._cache[key] = out
        return out

    # ----------------------------------------------------------------- oracles

    def reference_rootfs(self, tag: str) -> Path:
        """``umoci unpack`` of ``tag``: the rootfs every implementation must reproduce."""
        key = ("rootfs", tag)
        if key not in self._cache:
            bundle = self.root / "reference" / tag
            bundle.parent.mkdir(parents=True, exist_ok=True)
            self._umoci("unpack", "--image", f"{self.layout}:{tag}", bundle)
            self._cache[key] = bundle / "rootfs"
        return self._cache[key]


def _decompress_layers(manifest: dict, layout: Path) -> dict:
    layers = []
    for desc in manifest["layers"]:
        tar = layer_tar_bytes(layout, desc)
        layers.append(descriptor(OCI_LAYER, write_blob(layout, tar), len(tar)))
    return dict(manifest, layers=layers)


def umoci_unpack_layout(layout: Path, dest: Path, workdir: Path) -> Path:
    """``umoci unpack`` the only image of any OCI layout (e.g. one pyunion saved).

    skopeo first copies it (verifying every digest) into a scratch layout under a plain tag,
    because umoci wants a tag and the saved ref name may not be one umoci accepts.
    """
    scratch = workdir / f"scratch-{dest.name}"
    run(["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}", f"oci:{scratch}:x"])
    run(["umoci", "unpack", "--image", f"{scratch}:x", dest])
    return dest / "rootfs"
