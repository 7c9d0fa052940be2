"""``pyunion build`` against ``podman build --layers`` on the busybox image: the same
Containerfiles, the same results (rootfs, config, layers, history)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading

from tests.build.conftest import build_both, compare, write_context
from tests.container.conftest import IMAGE


def test_arg_and_env_substitution_everywhere(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"""# syntax=docker/dockerfile:1
ARG BASE={IMAGE}
FROM $BASE
ARG DIR=/opt/app
ARG OWNER
ARG UNSET
ENV APP_DIR=$DIR \\
    GREETING="hello world" OTHER=${{UNSET:-fallback}} ALT=${{DIR:+set}}
ENV PLAIN_FORM value with spaces
WORKDIR ${{APP_DIR}}/sub
COPY --chown=${{OWNER}} data.txt ${{APP_DIR}}/data-${{OTHER}}.txt
# a comment between continued lines and a JSON form
RUN echo "$GREETING $DIR" > /greeting && \\
    # inside the RUN
    echo ${{ALT}} >> /greeting
LABEL version="${{OTHER}}-1" "with space"="a b"
EXPOSE 8080 53/udp
VOLUME ["/data/$OTHER"]
USER ${{OWNER}}
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo $GREETING
""",
        "data.txt": "data\n"})
    ours, theirs = build_both(px, podman, context, "--build-arg", "OWNER=app",
                              "--label", "from.cli=yes")
    mine = compare(px, podman, ours, theirs)
    assert mine["Config"]["WorkingDir"] == "/opt/app/sub"
    assert mine["Config"]["Labels"]["from.cli"] == "yes"
    assert "OTHER=fallback" in mine["Config"]["Env"]


def test_copy_chown_chmod_and_add_of_a_local_tar(px, podman, tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data, mode, uid in (("x/one.txt", b"one\n", 0o600, 5), ("x/two", b"2", 0o755, 0)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("x/link")
        link.type, link.linkname = tarfile.SYMTYPE, "one.txt"
        tar.addfile(link)
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"""FROM {IMAGE}
COPY --chown=app:app --chmod=640 a.txt /dst/
COPY --chown=7 sub /sub-copy/
COPY --chmod=700 sub/deeper/f /single
COPY a.txt sub/deeper/f /many/
ADD files.tar.gz /extracted/
ADD a.txt /added.txt
""",
        "a.txt": "alpha\n", "sub/s.txt": "s\n", "sub/deeper/f": "deep\n",
        "files.tar.gz": archive.getvalue()})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)


def test_dockerignore_with_exceptions(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"FROM {IMAGE}\nCOPY . /ctx/\n",
        ".dockerignore": "# comment\n*.log\n!keep.log\nsecret/\nbuild\n!build/out\n**/tmp*\n",
        "a.log": "no\n", "keep.log": "yes\n", "secret/key": "no\n", "src/main.c": "int x;\n",
        "src/tmpfile": "no\n", "build/obj.o": "no\n", "build/out/app": "yes\n",
        "sub/a.log": "yes (only top-level *.log is ignored)\n"})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)
    point = px.tmp / "look"
    point.mkdir()
    px("mount-image", ours, point)
    try:
        copied = sorted(str(p.relative_to(point / "ctx")) for p in (point / "ctx").rglob("*"))
    finally:
        px("umount-image", point)
    assert "keep.log" in copied and "a.log" not in copied and "secret" not in copied
    assert "build/out/app" in copied and "build/obj.o" not in copied


def test_user_and_workdir_that_does_not_exist_yet(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"""FROM {IMAGE}
USER app
WORKDIR /home/app/new/dir
RUN id -u > uid && pwd > where
WORKDIR relative
COPY f .
USER root
WORKDIR /never/made
""",
        "f": "f\n"})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)


def test_cmd_entrypoint_shell_healthcheck_onbuild(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"""FROM {IMAGE}
CMD ["a", "b"]
ENTRYPOINT echo hi
SHELL ["/bin/sh", "-ec"]
RUN echo shell > /shell
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo triggered > /onbuild
"""})
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)
    config = json.loads(px("inspect", ours).stdout)[0]["Config"]
    # docker resets an inherited CMD when ENTRYPOINT is set, not one set in the same stage;
    # (SHELL comes after ENTRYPOINT here: podman 4.3 ignores SHELL for CMD and ENTRYPOINT,
    # docker does not, and pyunion does as docker documents)
    assert config["Cmd"] == ["a", "b"] and config["Entrypoint"] == ["/bin/sh", "-c", "echo hi"]


def test_copy_through_symlinks_over_existing_files_and_into_existing_dirs(px, podman, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"""FROM {IMAGE}
RUN ln -s /srv/lower /linkdir && ln -s target /srv/links/dangling-later \\
    && mkdir -p /home/app/existing && chown app /home/app/existing
COPY a.txt /linkdir/
COPY a.txt /srv/lower/b.txt
COPY tree/ /home/app/existing/
COPY a.txt /srv/links/soft
COPY tree /srv/tree/
""",
        "a.txt": "new a\n", "tree/x": "replaced x\n", "tree/y/new": "new\n",
        "tree/empty/.keep": ""})
    (context / "tree" / "link").symlink_to("x")
    (context / "tree" / "y").chmod(0o750)
    ours, theirs = build_both(px, podman, context)
    compare(px, podman, ours, theirs)


def test_the_saved_image_is_the_built_one(px, podman, tmp_path):
    """A RUN's upper becomes its layer directory in the store as it is; the layer's blob is
    written from it: loading ``pyunion save``'s archive into podman gives the same image."""
    context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
RUN rm /srv/lower/a.txt && rm -rf /srv/opq && mkdir /srv/opq && echo new > /srv/opq/new \\
    && chmod 600 /srv/lower/mode.txt && ln /srv/lower/b.txt /srv/lower/b-link \\
    && mkfifo /srv/fifo && mv /srv/tree /srv/moved
RUN echo more >> /srv/lower/c.txt && rm -rf /srv/doomed
"""})
    built = "sha256:" + px("build", "-q", "-t", "saved:1", context).stdout.split()[-1]
    archive = tmp_path / "saved.tar"
    px("save", "-o", archive, "saved:1")
    loaded = podman("load", "-i", archive).stdout
    assert "saved:1" in loaded
    compare(px, podman, built, "docker.io/library/saved:1")


def test_add_of_a_url(px, podman, tmp_path):
    """ADD fetches a URL (a local HTTP server here): mode 0600, the server's Last-Modified as
    the mtime, not extracted even when it is an archive."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "page.txt").write_text("served page\n")
    with tarfile.open(served / "data.tar.gz", "w:gz") as tar:
        tar.add(served / "page.txt", arcname="inside.txt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        context = write_context(tmp_path / "ctx", {"Containerfile": f"""FROM {IMAGE}
ADD {base}/page.txt /downloads/
ADD --chown=app {base}/data.tar.gz /downloads/renamed.tar.gz
ADD {base}/page.txt {base}/data.tar.gz /both/
"""})
        ours, theirs = build_both(px, podman, context)
    finally:
        server.shutdown()
        server.server_close()
    compare(px, podman, ours, theirs)
