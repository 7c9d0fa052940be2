"""``pyunion cp``: copy files between a container (running or not) and the host."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from unionfs.image.container import copy, records, rootfs, session
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Copy files between a container and the host"
EPILOG = """examples:
  pyunion cp web:/etc/hostname .           out of the container
  pyunion cp ./site web:/srv               a directory into it (as /srv/site)
  pyunion cp ./site/. web:/srv             what is in ./site, into /srv
  pyunion cp web:/srv - | tar -t           a tar stream on stdout (- on stdin: into it)
Modes are kept; owners become root's in the container and yours on the host, unless -a.
Symbolic links in the container's path are followed inside its rootfs, never out of it.
A local path with a colon in its first part is written ./a:b.
"""


def register(commands) -> None:
    p = commands.add_parser("cp", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--archive", action="store_true",
                   help="keep the source's owners (uid/gid)")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="follow a symbolic link that is the source")
    p.add_argument("source", metavar="SRC", help="CONTAINER:PATH, a local path, or -")
    p.add_argument("destination", metavar="DEST", help="CONTAINER:PATH, a local path, or -")
    p.set_defaults(run=run)


def split_location(text: str) -> tuple[str | None, str]:
    """(container, path) for ``CONTAINER:PATH``, (None, text) for a local path or ``-``."""
    if text.startswith(("/", ".")) or ":" not in text:
        return None, text
    container, _, path = text.partition(":")
    if not container:
        raise ImageError(f"no container named in {text!r}")
    return container, path or "/"


@contextlib.contextmanager
def mounted_rootfs(store: Store, text: str) -> Iterator[str]:
    """The container's rootfs, mounted for the copy if it was not (and unmounted after)."""
    container = session.refresh(store, records.get(store, text))
    was_mounted = rootfs.is_mounted(container)
    point = rootfs.mount(store, container)
    try:
        yield point
    finally:
        if not was_mounted:
            current = records.get(store, container.id)
            if current.state != "running":
                rootfs.unmount(store, current)


def run(args, store: Store) -> int:
    source_ctr, source = split_location(args.source)
    dest_ctr, dest = split_location(args.destination)
    if (source_ctr is None) == (dest_ctr is None):
        raise ImageError("one of SRC and DEST must be CONTAINER:PATH, the other a local path "
                         "or -")
    if source_ctr is not None:
        with mounted_rootfs(store, source_ctr) as root:
            _copy_out(root, source, dest, args)
    else:
        assert dest_ctr is not None
        with mounted_rootfs(store, dest_ctr) as root:
            _copy_in(root, source, dest, args)
    return 0


def _copy_out(root: str, source_text: str, dest_text: str, args) -> None:
    source = copy.resolve_in_root(root, source_text, follow_last=args.follow_link
                                  or source_text.endswith("/") or source_text.endswith("/."))
    if not os.path.lexists(source):
        raise ImageError(f"no such file or directory in the container: {source_text}")
    name = os.path.basename(source_text.rstrip("/")) or "/"
    if dest_text == "-":
        copy.archive(source, name, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    dest = os.path.abspath(dest_text)
    into, name, contents_only = copy.plan(source, source_text, dest, dest_text,
                                          os.path.isdir(dest), os.path.lexists(dest))
    owner = None if args.archive else (os.geteuid(), os.getegid())
    with copy.piped(lambda out: copy.archive(source, name, out,
                                             contents_only=contents_only)) as stream:
        copy.extract(stream, into, owner=owner)


def _copy_in(root: str, source_text: str, dest_text: str, args) -> None:
    dest = copy.resolve_in_root(root, dest_text)
    if source_text == "-":
        if not os.path.isdir(dest):
            raise ImageError(f"the destination {dest_text} must be an existing directory "
                             "for a tar stream")
        copy.extract(sys.stdin.buffer, dest)
        return
    source = os.path.abspath(source_text)
    if args.follow_link or source_text.endswith(("/", "/.")):
        source = os.path.realpath(source)
    into, name, contents_only = copy.plan(source, source_text, dest, dest_text,
                                          os.path.isdir(dest), os.path.lexists(dest))
    owner = None if args.archive else (0, 0)
    with copy.piped(lambda out: copy.archive(source, name, out,
                                             contents_only=contents_only)) as stream:
        copy.extract(stream, into, owner=owner)
