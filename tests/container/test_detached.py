"""Detached containers: ``run -d``, ``ps``, ``logs``, ``stop``, ``wait``, ``start``, and
``export`` of a running container's rootfs."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tarfile

from tests.container.conftest import IMAGE, mounts_under, wait_for


def status_of(px, name: str, *, all: bool = True) -> str:
    """The STATUS column of ``ps`` (table form) for one container, or '' if not listed."""
    lines = px("ps", *(["-a"] if all else [])).stdout.splitlines()
    header, rows = lines[0], lines[1:]
    start = header.index("STATUS")
    end = header.index("NAMES")
    for row in rows:
        if row.rstrip().endswith(" " + name):
            return row[start:end].strip()
    return ""


def test_detached_lifecycle(px):
    out = px("run", "-d", "--name", "web", IMAGE, "sh", "-c", "echo started; sleep 300").stdout
    container_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id), out
    assert px("ps", "-q").stdout.split() == [container_id[:12]]
    assert status_of(px, "web", all=False).startswith("Up"), px("ps").stdout
    wait_for(lambda: "started" in px("logs", "web").stdout, timeout=20, what="the log line")
    # the rootfs is mounted while it runs, and ps says where
    row = px.container("web")
    assert row["State"] == "running" and row["Mounts"], row
    assert any(point == row["Mounts"] for point, _, _ in mounts_under(px.tmp))

    # sh (pid 1 of its namespace) ignores SIGTERM: stop kills it after the grace period
    px("stop", "-t", "2", "web")
    status = status_of(px, "web")
    assert status.startswith("Exited (137)"), status
    assert px("ps", "-q").stdout == ""
    assert px("wait", "web").stdout.strip() == "137"
    assert px.container("web")["ExitCode"] == 137
    assert mounts_under(px.tmp) == []  # the monitor unmounted the rootfs
    assert px.runc_containers() == []

    # start runs the same command again, in the same rootfs
    px("start", "web")
    assert status_of(px, "web").startswith("Up")
    wait_for(lambda: px("logs", "web").stdout.count("started") == 2, timeout=20,
             what="the second log line")
    px("rm", "-f", "web")
    assert px("ps", "-aq").stdout == ""


def test_stop_delivers_sigterm(px):
    px("run", "-d", "--name", "trapper", IMAGE, "sh", "-c",
       "trap 'echo got-term; exit 0' TERM; echo ready; sleep 300 & wait")
    wait_for(lambda: "ready" in px("logs", "trapper").stdout, timeout=20, what="ready")
    px("stop", "-t", "20", "trapper")
    assert px("wait", "trapper").stdout.strip() == "0"
    assert px("logs", "trapper").stdout.split() == ["ready", "got-term"]
    assert status_of(px, "trapper").startswith("Exited (0)")


def test_wait_returns_the_exit_code(px):
    px("run", "-d", "--name", "short", IMAGE, "sh", "-c", "sleep 0.5; exit 9")
    assert px("wait", "short").stdout.strip() == "9"
    assert px.container("short")["ExitCode"] == 9


def test_rm_refuses_a_running_container(px):
    px("run", "-d", "--name", "busy", IMAGE, "sleep", "300")
    result = px("rm", "busy", check=False)
    assert result.returncode == 1 and "running" in result.stderr, (
        f"{result}\nps -a:\n{px('ps', '-a').stdout}\nlogs:\n{px('logs', 'busy', check=False)}")
    px("rm", "-f", "busy")
    assert px("ps", "-aq").stdout == ""
    assert px.runc_containers() == []
    assert mounts_under(px.tmp) == []


def tar_view(path) -> dict[str, tuple]:
    """name -> (type, size, sha256 or link target) of every member of a tar."""
    view = {}
    with tarfile.open(path) as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
                view[name] = ("file", member.size, digest, member.linkname)
            elif member.islnk():
                view[name] = ("hardlink", None, None, member.linkname.removeprefix("./"))
            elif member.issym():
                view[name] = ("symlink", None, None, member.linkname)
            elif member.isdir():
                view[name] = ("dir", None, None, None)
            else:
                view[name] = ("other", None, None, None)
    return view


def walk_view(root: str) -> tuple[dict[str, tuple], dict[tuple[int, int], list[str]]]:
    view: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    view[rel] = ("file", st.st_size, hashlib.sha256(f.read()).hexdigest(), "")
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                view[rel] = ("symlink", None, None, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                view[rel] = ("dir", None, None, None)
            else:
                view[rel] = ("other", None, None, None)
    return view, inodes


def test_export_equals_the_mounted_rootfs(px, workdir):
    px("run", "-d", "--name", "web", IMAGE, "sh", "-c",
       "echo payload > /srv/added; rm /srv/lower/b.txt; echo more >> /srv/lower/a.txt; "
       "ln /srv/added /srv/added-link; echo ready; sleep 300")
    wait_for(lambda: "ready" in px("logs", "web").stdout, timeout=20, what="ready")
    point = px("mount", "web").stdout.strip()
    assert point == px.container("web")["Mounts"]
    tar = workdir / "x.tar"
    px("export", "web", "-o", tar)
    exported = tar_view(tar)
    walked, inodes = walk_view(point)
    # a hard link is one file member plus hardlink members naming it
    for group in inodes.values():
        if len(group) > 1:
            files = [n for n in group if exported.get(n, ("",))[0] == "file"]
            assert len(files) == 1, (group, [exported.get(n) for n in group])
            for name in group:
                if name != files[0]:
                    assert exported.get(name) == ("hardlink", None, None, files[0]), name
                    exported[name] = exported[files[0]]
    assert sorted(exported) == sorted(walked)
    mismatched = {n: (exported[n], walked[n]) for n in walked if exported[n] != walked[n]}
    assert not mismatched
    assert exported["srv/added"][1] == len("payload\n")
    assert "srv/lower/b.txt" not in exported
