"""``make demo``: mount a small built-in layer stack with mount.pyunion and show what it does.

Builds a base "rootfs" layer and an app layer that overrides one file and deletes another
(a whiteout), mounts them under an empty upper with the real ``mount.pyunion`` command,
prints the merged tree, writes through the mount (copy-up, delete, new directory), shows what
landed in the upper, and unmounts. Everything lives in a temporary directory that is removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path


def build_layers(root: Path) -> tuple[Path, Path, Path]:
    base, app, upper = root / "layers/base", root / "layers/app", root / "layers/upper"
    files = {
        base / "etc/os-release": 'NAME="Demo Linux"\nVERSION_ID="1.0"\n',
        base / "etc/motd": "Welcome to the base image.\n",
        base / "etc/legacy.conf": "# obsolete, removed by the app layer\n",
        base / "usr/bin/hello": "#!/bin/sh\necho hello from the base layer\n",
        base / "usr/share/doc/base/README": "The base layer.\n",
        app / "etc/motd": "Welcome to the app image (overrides the base motd).\n",
        app / "opt/app/app.py": "print('the app')\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    os.chmod(base / "usr/bin/hello", 0o755)
    os.symlink("../usr/bin/hello", base / "etc/hello-link")
    os.mknod(app / "etc/legacy.conf", stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    upper.mkdir(parents=True)
    return app, base, upper


def show_tree(title: str, root: Path) -> None:
    print(f"\n== {title}")
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                what = "whiteout (char 0/0)"
            elif stat.S_ISLNK(st.st_mode):
                what = f"-> {os.readlink(path)}"
            else:
                what = _summary(path.read_text()) if st.st_size else "(empty)"
            print(f"  {rel / name}: {what}")
        for name in dirnames:
            path = Path(dirpath) / name
            opaque = _xattr(path, "trusted.overlay.opaque") == b"y"
            if opaque or not os.listdir(path):
                print(f"  {rel / name}/" + ("  (opaque)" if opaque else ""))


def _summary(text: str, width: int = 72) -> str:
    """A file's content on one line: its lines joined with ' | ', shortened."""
    line = " | ".join(text.splitlines())
    return repr(line if len(line) <= width else line[: width - 3] + "...")


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="pyunion-demo-"))
    mnt = root / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        app, base, upper = build_layers(root)
        show_tree("base layer", base)
        show_tree("app layer (overrides etc/motd, deletes etc/legacy.conf)", app)
        run([sys.executable, "-m", "mount_helper", f"{app}:{base}", str(upper), str(mnt)])
        mounted = True
        show_tree("merged view at the mountpoint", mnt)
        print("\n== writing through the mount")
        with open(mnt / "etc/os-release", "a") as f:
            f.write('VARIANT="demo"\n')
        print("  appended to etc/os-release (a base file: copied up first)")
        os.unlink(mnt / "usr/share/doc/base/README")
        print("  removed usr/share/doc/base/README (a whiteout hides it)")
        (mnt / "var/log").mkdir(parents=True)
        (mnt / "var/log/demo.log").write_text("a new file\n")
        print("  created var/log/demo.log")
        show_tree("merged view now", mnt)
        show_tree("the upper directory (kernel overlayfs format)", upper)
        untouched = "demo" not in (base / "etc/os-release").read_text()
        print(f"\n  base layer untouched: {untouched}")
        run(["umount", str(mnt)])
        mounted = False
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
