"""``pyunion build`` as an ordinary user (uid 65534, with subordinate ids, in the harness of
tests/test_rootless_images.py): RUN in the user's namespace, COPY --chown, ADD of a local tar,
USER and a WORKDIR that does not exist yet. The image, saved by the user and loaded into
podman, is the image ``podman build`` (as root) makes of the same Containerfile."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

from tests.build.conftest import PODMAN_MOUNT_TARGETS, _config, _entries
from tests.cli_helpers import NOBODY, public_dir
from tests.container.conftest import snapshot
from tests.test_rootless_images import PYUNION, WITH_SUBORDINATE_IDS

CONTAINERFILE = """FROM localhost/rootless-base:1
RUN echo ran > /ran && chown 1000:1000 /ran && mkdir -p /var/x && chmod 700 /var/x
COPY --chown=1000:1000 a.txt /home/a.txt
ADD x.tar /ex/
USER app
WORKDIR /w
RUN id -u > /w/id && id -g >> /w/id
CMD ["/bin/sh"]
"""


def _rootfs(root) -> None:
    (root / "bin").mkdir(parents=True)
    for d in ("etc", "home", "tmp"):
        (root / d).mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "id", "cat", "ls", "echo", "chown", "chmod", "mkdir"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n"
                                     "app:x:1000:1000::/home:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")


def test_an_ordinary_user_builds_what_podman_builds(podman, tmp_path):
    with public_dir() as pub:
        _rootfs(pub / "rootfs")
        write_build_context(pub / "ctx")
        base_tar = tmp_path / "base.tar"
        with tarfile.open(base_tar, "w") as tar:
            tar.add(pub / "rootfs", arcname=".")
        podman("import", "--change", 'CMD ["/bin/sh"]', base_tar, "localhost/rootless-base:1")
        # (`id` alone would differ: podman gives the process its supplementary groups)
        with tarfile.open(pub / "rootfs.tar", "w") as tar:  # the same base for both
            tar.add(pub / "rootfs", arcname=".")
        for dirpath, dirnames, filenames in os.walk(pub):
            for name in [*dirnames, *filenames, "."]:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
        session = f"""set -e
{PYUNION} import -q rootfs.tar localhost/rootless-base:1
{PYUNION} build -q -t localhost/rootless-built:1 ctx
{PYUNION} save -o built.tar localhost/rootless-built:1
{PYUNION} ps -aq | wc -l
"""
        env = {**os.environ, "HOME": str(pub), "XDG_DATA_HOME": str(pub / "data"),
               "XDG_RUNTIME_DIR": str(pub), "PYTHONPATH": os.getcwd()}
        env.pop("PYUNION_ROOT", None)
        result = subprocess.run([*WITH_SUBORDINATE_IDS, "sh", "-c", session], cwd=pub, env=env,
                                capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].strip() == "0"  # no container left
        podman("load", "-i", pub / "built.tar")
    theirs = podman("build", "--layers", "-q", "-t", "podman-built:1",
                    write_build_context(tmp_path / "podman-ctx"),
                    ).stdout.split()[-1]
    trees = []
    for image in ("localhost/rootless-built:1", theirs):
        with podman.mounted(image) as point:
            trees.append(_entries(snapshot(point)))
    ours, other = trees
    for path in PODMAN_MOUNT_TARGETS:
        if path not in ours and other.get(path, {}).get("size", 0) == 0:
            other.pop(path, None)
    diffs = [f"{p}: pyunion {ours.get(p)} podman {other.get(p)}"
             for p in sorted(set(ours) | set(other)) if ours.get(p) != other.get(p)]
    assert not diffs, "rootfs differs:\n  " + "\n  ".join(diffs[:30])
    assert _config(podman.inspect("localhost/rootless-built:1")["Config"]) == \
        _config(podman.inspect(theirs)["Config"])


def write_build_context(context):
    """The build context (both tools build one of their own: the user's goes with its
    directory): a file, a tar with owners for ADD, the Containerfile."""
    context.mkdir()
    (context / "a.txt").write_text("a\n")
    with tarfile.open(context / "x.tar", "w") as tar:
        info = tarfile.TarInfo("f")
        info.size, info.uid, info.gid, info.mode = 2, 7, 8, 0o640
        tar.addfile(info, io.BytesIO(b"x\n"))
    (context / "Containerfile").write_text(CONTAINERFILE)
    return context
