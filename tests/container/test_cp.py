"""``cp`` both ways, for a running and a stopped container, and ``-`` tar streams: the trees
compared with the image's rootfs (modes, owners as docker documents, contents, links), GNU tar
reading and writing the streams; paths through symbolic links stay inside the rootfs."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from tests.container.conftest import IMAGE, assert_same_tree, build_rootfs, snapshot, wait_for

pytestmark = pytest.mark.timeout(180)


def _owned_by(tree: dict, uid: int, gid: int) -> dict:
    for entry in tree["entries"].values():
        entry["uid"], entry["gid"] = uid, gid
    return tree


@pytest.fixture
def reference(tmp_path):
    """The image's /srv as the fixture built it."""
    root = tmp_path / "reference"
    build_rootfs(root)
    return root


def test_a_stopped_container(px, tmp_path):
    """Its rootfs is mounted for the copy, and unmounted after."""
    px("create", "--name", "box", IMAGE)
    (tmp_path / "in").write_text("in\n")
    px("cp", tmp_path / "in", "box:/work/in")
    px("cp", "box:/work/in", tmp_path / "back")
    assert (tmp_path / "back").read_text() == "in\n"
    assert px.container("box")["Mounts"] == ""
    px("commit", "-q", "box", "copied:1")
    assert px("run", "--rm", "copied:1", "cat", "/work/in").stdout == "in\n"


def test_copy_out_and_back(px, tmp_path, reference):
    px("run", "-d", "--name", "box", IMAGE, "sleep", "300")
    out = tmp_path / "out"
    out.mkdir()
    # a tree: DEST exists, so it lands as out/srv, modes and links kept, owners root's (-a)
    px("cp", "-a", "box:/srv", out)
    assert_same_tree(snapshot(out / "srv"), snapshot(reference / "srv"), "cp -a of /srv")
    # to a new name; the owner becomes the caller's without -a
    px("cp", "box:/home/app", out / "home-copy")
    assert os.stat(out / "home-copy").st_uid == os.geteuid()
    px("cp", "-a", "box:/home/app", out / "home-kept")
    assert os.stat(out / "home-kept").st_uid == 1000
    # the contents of a directory (SRC/.) into an existing one
    (out / "contents").mkdir()
    px("cp", "box:/srv/lower/.", out / "contents")
    assert sorted(os.listdir(out / "contents")) == ["a.txt", "b.txt", "c.txt", "mode.txt"]
    # into the container: owners become root's, modes kept
    host = tmp_path / "host"
    (host / "d").mkdir(parents=True)
    (host / "d" / "f").write_text("from the host\n")
    os.chmod(host / "d" / "f", 0o640)
    os.chown(host / "d" / "f", 1234, 1234)
    px("cp", host / "d", "box:/work")
    px("cp", host / "d" / "f", "box:/work/renamed")
    back = tmp_path / "back"
    back.mkdir()
    px("cp", "-a", "box:/work/.", back)
    expected = snapshot(host)
    expected["entries"]["renamed"] = dict(expected["entries"]["d/f"])
    assert_same_tree(snapshot(back), _owned_by(expected, 0, 0), "files copied in")
    assert px("exec", "box", "cat", "/work/renamed").stdout == "from the host\n"
    # errors: one line, status 1, nothing made
    for args in (["box:/nope", out], ["box:/srv/lower/a.txt", f"{out}/missing-dir/"],
                 ["box:/srv", out / "contents" / "a.txt"], [out, out / "x"], ["nobox:/x", out]):
        result = px("cp", *args, check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    assert not (out / "x").exists() and not (out / "missing-dir").exists()


def test_tar_streams(px, tmp_path):
    px("create", "--name", "box", IMAGE)
    # out: GNU tar reads what cp writes, owners and modes as in the container
    raw = px("cp", "box:/srv/links", "-", binary=True).stdout
    listing = subprocess.run(["tar", "-tf", "-"], input=raw, capture_output=True,
                             check=True).stdout.decode()
    assert sorted(listing.split()) == ["links/", "links/hard", "links/soft", "links/target"]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["links/soft"].issym() and members["links/soft"].linkname == "target"
    assert members["links/hard"].islnk() or members["links/target"].islnk()
    # in: a stream GNU tar made, owners kept
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file").write_text("streamed\n")
    os.chown(src / "sub" / "file", 42, 43)
    stream = subprocess.run(["tar", "-C", src, "-cf", "-", "sub"], capture_output=True,
                            check=True).stdout
    px("cp", "-", "box:/work", input=stream)
    back = tmp_path / "back"
    back.mkdir()
    px("cp", "-a", "box:/work/sub/file", back)
    assert (back / "file").read_text() == "streamed\n"
    assert (os.stat(back / "file").st_uid, os.stat(back / "file").st_gid) == (42, 43)


def test_links_stay_inside_the_rootfs(px, tmp_path):
    px("run", "-d", "--name", "box", IMAGE, "sh", "-c",
       "ln -s / /tmp/root; ln -s /etc/passwd /tmp/pw; ln -s ../../.. /tmp/up; sleep 300")
    wait_for(lambda: px("exec", "box", "test", "-L", "/tmp/up", check=False).returncode == 0,
             what="the links")
    out = tmp_path / "out"
    out.mkdir()
    # reading through an absolute link gives the container's file, not the host's
    px("cp", "-L", "box:/tmp/pw", out / "pw")
    assert (out / "pw").read_text().startswith("root:x:0:0:root:/root:/bin/sh\napp:")
    px("cp", "box:/tmp/up/etc/group", out / "group")
    assert (out / "group").read_text() == "root:x:0:\napp:x:1000:\n"
    # writing through them lands in the container
    marker = tmp_path / "marker"
    marker.write_text("inside\n")
    px("cp", marker, "box:/tmp/root/work/")
    px("cp", marker, "box:/tmp/up/")
    assert px("exec", "box", "cat", "/work/marker", "/marker").stdout == "inside\n" * 2
    assert not os.path.exists("/work/marker") or open("/work/marker").read() != "inside\n"
    # a stream whose member would leave the destination is refused before anything is written
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name in ("ok", "../escaped"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"hi\n"))
    result = px("cp", "-", "box:/work", input=evil.getvalue(), check=False)
    assert result.returncode == 1 and "leaves the destination" in result.stderr, result
    assert px("exec", "box", "ls", "/", check=False).stdout.count("escaped") == 0
    # a member reached through a link the stream itself made is refused too
    sneaky = io.BytesIO()
    with tarfile.open(fileobj=sneaky, mode="w") as tar:
        link = tarfile.TarInfo("hop")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tar.addfile(link)
        info = tarfile.TarInfo("hop/planted")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    result = px("cp", "-", "box:/work", input=sneaky.getvalue(), check=False)
    assert result.returncode == 1, result
    assert not (tmp_path / "planted").exists()
