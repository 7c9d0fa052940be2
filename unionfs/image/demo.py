"""``make demo``, second part: build an image layer by layer and run it, with ``pyunion``.

A busybox rootfs becomes a base image (``import``); a container of it gets a change through its
mounted rootfs and is committed as a new image; that image runs under runc and shows the host's
kernel (the bootfs is shared, only the rootfs comes from the image). Everything happens in a
temporary store that is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "uname", "id", "true")


def pyunion(store: Path, *args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "unionfs.image.cli", "--root", str(store), *args]
    print("$ pyunion " + " ".join(args), flush=True)
    result = subprocess.run(cmd, check=True, text=True,
                            stdout=subprocess.PIPE if capture else None)
    return (result.stdout or "").strip()


def build_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/motd").write_text("busybox base\n")


def main() -> int:
    if not os.path.exists(BUSYBOX):
        print(f"(image demo skipped: {BUSYBOX} is missing; apt-get install busybox-static)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="pyunion-image-demo-"))
    store = work / "store"
    try:
        build_rootfs(work / "rootfs")
        print("\n== an image from a rootfs directory, then a container of it")
        pyunion(store, "import", "-q", "-c", 'CMD ["/bin/sh"]', str(work / "rootfs"),
                "demo/base:1.0")
        pyunion(store, "create", "--name", "builder", "demo/base:1.0", capture=True)
        rootfs = Path(pyunion(store, "mount", "builder", capture=True))
        (rootfs / "etc/motd").write_text("busybox base + the app layer\n")
        (rootfs / "etc/app.conf").write_text("mode = demo\n")
        print("  wrote etc/motd and etc/app.conf through the container's mounted rootfs")
        pyunion(store, "diff", "builder")
        pyunion(store, "umount", "builder")
        print("\n== the container's upper becomes the top layer of a new image")
        pyunion(store, "commit", "-q", "-m", "add app.conf", "builder", "demo/app:1.0")
        pyunion(store, "images")
        pyunion(store, "history", "demo/app:1.0")
        if shutil.which("runc") and os.geteuid() == 0:
            print("\n== run it: the kernel is the host's, the files are the image's")
            pyunion(store, "run", "--rm", "demo/app:1.0", "sh", "-c",
                    "uname -sr; cat /etc/motd /etc/app.conf")
        pyunion(store, "rm", "builder")
        pyunion(store, "df")
    finally:
        subprocess.run([sys.executable, "-m", "unionfs.image.cli", "--root", str(store),
                        "rm", "-f", "builder"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
