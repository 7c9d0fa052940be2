"""Two processes creating containers at once; an image 129 layers deep (a busybox base and 128
tiny layers, crafted as an OCI layout) that loads, mounts and runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

from tests.container.conftest import BUSYBOX, IMAGE, REPO_ROOT, clean_env, wait_for

CREATOR = """
import os, sys, time
from unionfs.image.cli import main
root, go, image, ready = sys.argv[1:5]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
codes = [main(["--root", root, "create", image]) for _ in range(10)]
codes.append(main(["--root", root, "create", "--name", "shared", image]))
print("codes", " ".join(map(str, codes)), file=sys.stderr)
"""


def test_parallel_creates_get_distinct_ids_and_names(px, workdir):
    go = workdir / "go"
    procs = []
    for n in range(2):
        out = open(workdir / f"out{n}", "wb")  # noqa: SIM115 - closed below
        err = open(workdir / f"err{n}", "wb")  # noqa: SIM115
        procs.append((px.track(subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(px.root), str(go), IMAGE,
             str(workdir / f"ready{n}")],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=clean_env(),
            cwd=REPO_ROOT)), out, err))
    # both interpreters up (pyunion imported) and waiting: then both go at once
    wait_for(lambda: all((workdir / f"ready{n}").exists() for n in range(2)), timeout=60,
             what="both creators to be ready")
    go.touch()
    codes = []
    ids = []
    for n, (proc, out, err) in enumerate(procs):
        assert proc.wait(timeout=100) == 0
        out.close()
        err.close()
        stderr = (workdir / f"err{n}").read_text()
        code_line = [line for line in stderr.splitlines() if line.startswith("codes ")]
        assert code_line, stderr
        codes.append([int(c) for c in code_line[0].split()[1:]])
        ids += (workdir / f"out{n}").read_text().split()
    # 10 + 10 unnamed creates all succeed; exactly one of the two "shared" creates does
    assert [c[:10] for c in codes] == [[0] * 10, [0] * 10], codes
    assert sorted(c[10] for c in codes) == [0, 1], codes
    assert len(ids) == 21 and len(set(ids)) == 21, ids
    rows = px.containers()
    assert len(rows) == 21, sorted(rows)
    assert sorted(r["ID"] for r in rows.values()) == sorted(ids)
    assert "shared" in rows
    for row in rows.values():
        assert (px.root / "containers" / row["ID"] / "upper").is_dir()


# --------------------------------------------------------------------------- deep stacks

DEPTH = 128


def _tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    return info, None


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_700_000_000
    return info, None


def _blob(layout, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return "sha256:" + digest


def host_architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def build_deep_layout(layout) -> None:
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    tars = [_tar_bytes([_dir("bin"), _file("bin/busybox", busybox, 0o755),
                        _symlink("bin/sh", "busybox"), _symlink("bin/cat", "busybox")])]
    for i in range(DEPTH):
        tars.append(_tar_bytes([_file(f"f{i}", f"{i}\n".encode()),
                                _file("shared", f"layer {i}\n".encode())]))
    layers, diff_ids = [], []
    for plain in tars:
        packed = gzip.compress(plain, compresslevel=1, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": _blob(layout, packed), "size": len(packed)})
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    config = json.dumps({
        "architecture": host_architecture(), "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(layout, config), "size": len(config)},
        "layers": layers,
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _blob(layout, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "deep:128"}}]}
    (layout / "index.json").write_text(json.dumps(index))


def test_deep_stack_runs(px, workdir):
    layout = workdir / "deep"
    build_deep_layout(layout)
    assert px("load", "-i", layout, timeout=110).stdout.strip() == "Loaded image: deep:128"
    info = json.loads(px("inspect", "deep:128").stdout)[0]
    assert len(info["RootFS"]["Layers"]) == DEPTH + 1
    out = px("run", "--rm", "deep:128", "cat", "/f0", "/f127", "/shared").stdout
    assert out == f"0\n{DEPTH - 1}\nlayer {DEPTH - 1}\n"
