"""``pyunion-overlayfs``: pyunion behind fuse-overlayfs's command line.

containers/storage (podman, buildah, CRI-O) mounts a layer stack through its overlay driver's
``mount_program`` by running, in its graph directory (``.../overlay``)::

    PROGRAM -o lowerdir=l/A:l/B,upperdir=ID/diff,workdir=ID/work[,,volatile][,OPTS] MERGED
    PROGRAM -o lowerdir=ID/diff:l/A:l/B MERGED                 (a read-only view of a layer)

where the lower paths may be relative to that directory, the option string may hold empty
options (``,,``) and may be followed by ``uidmapping=``/``gidmapping=`` (rootless),
``xattr_permissions=2`` (a forced mask) and the ``mountopt`` of ``storage.conf``; it unmounts
with ``fusermount3 -u MERGED``. For containerd's mount type ``fuse3.pyunion-overlayfs`` (the
pyunion snapshotter's), mount.fuse3 runs it as ``PROGRAM SOURCE MERGED -o OPTIONS``.

This module turns that command line into ``mount.pyunion``'s overlayfs form (``SOURCE MERGED
-o ...``) and mounts through the same parser and daemon.
"""

from __future__ import annotations

import sys

from mount_helper.__main__ import parse_args
from unionfs.fs.options import MountError

PROGRAM = "pyunion-overlayfs"
SOURCE = "pyunion-overlayfs"

# fuse-overlayfs options that only tune fuse-overlayfs's own implementation: pyunion's result
# does not depend on them.
TUNING_OPTIONS = {"threaded", "fast_ino", "writeback", "max_idle_threads", "static_nlink",
                  "noacl", "plugins"}
# fuse-overlayfs options whose meaning pyunion does not implement: refused rather than ignored.
REFUSED_OPTIONS = {"squash_to_root", "squash_to_uid", "squash_to_gid", "noxattrs"}

USAGE = f"""usage: {PROGRAM} [-f] [-d] -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTS] MERGED
       {PROGRAM} SOURCE MERGED -o OPTS     (as mount.fuse3 runs it for type fuse3.{PROGRAM})

fuse-overlayfs's command line, served by pyunion (mount.pyunion's overlayfs form). For
containers/storage (podman, buildah, CRI-O): in storage.conf

  [storage]
  driver = "overlay"
  [storage.options.overlay]
  mount_program = "/path/to/{PROGRAM}"

Lowers are listed top-most first; relative paths are taken from the current directory. -o may
be repeated; empty options (",,") are skipped. Without upperdir= the view is read-only.
Options: everything mount.pyunion takes (see mount.pyunion --help), and fuse-overlayfs's
  fsync=0              as volatile (no fsync reaches the upper's filesystem)
  fsync=1              the default
  uidmapping=, gidmapping=, xattr_permissions=0|2, timeout=, volatile, debug   as mount.pyunion
  threaded=, fast_ino=, writeback=, max_idle_threads=, static_nlink, noacl, plugins=
                       accepted and ignored (they tune fuse-overlayfs itself)
  squash_to_root, squash_to_uid=, squash_to_gid=, noxattrs=   refused (not implemented)
-f stays in the foreground, -d logs every request. Unmount with fusermount3 -u MERGED.
"""


def translate(argv: list[str]) -> list[str]:
    """fuse-overlayfs's arguments -> ``mount.pyunion SOURCE MERGED [-f] [-d] -o OPTS``."""
    flags: list[str] = []
    options: list[str] = []
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            value = next(args, None)
            if value is None:
                raise MountError("-o needs an option string")
            options.extend(_options(value))
        elif arg.startswith("-o") and len(arg) > 2:
            options.extend(_options(arg[2:]))
        elif arg in ("-f", "-d"):
            flags.append(arg)
        elif arg.startswith("-") and arg != "-":
            raise MountError(f"unknown flag '{arg}' (see --help)")
        else:
            positional.append(arg)
    if len(positional) not in (1, 2):
        raise MountError("expected [SOURCE] MERGED besides the options (see --help)")
    if not any(opt.startswith("lowerdir=") for opt in options):
        raise MountError("lowerdir= is required")
    source = positional[0] if len(positional) == 2 else SOURCE
    return [source, positional[-1], *flags, "-o", ",".join(options)]


def _options(text: str) -> list[str]:
    """One ``-o`` string, split on unescaped commas, empty options dropped and fuse-overlayfs's
    own options turned into pyunion's (or refused)."""
    out = []
    for part in _split(text):
        key, _, value = part.partition("=")
        if not part:
            continue
        if key in TUNING_OPTIONS:
            continue
        if key in REFUSED_OPTIONS:
            raise MountError(f"option '{key}' (fuse-overlayfs) is not supported")
        if key == "fsync":
            if value not in ("0", "1"):
                raise MountError(f"fsync={value}: expected 0 or 1")
            if value == "0":
                out.append("volatile")
            continue
        out.append(part)
    return out


def _split(text: str) -> list[str]:
    """Splits on commas not escaped by a backslash, keeping the escapes for mount.pyunion."""
    parts, current, escaped = [], [], False
    for ch in text:
        if ch == "," and not escaped:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        escaped = ch == "\\" and not escaped
    parts.append("".join(current))
    return parts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE, end="")
        return 0
    if "--version" in argv or "-V" in argv:
        from importlib.metadata import version
        print(f"{PROGRAM}: pyunion {version('pyunion')} (fuse-overlayfs command line)")
        return 0
    from unionfs.fs.daemon import mount  # imports pyfuse3: keep --help and parse errors fast

    try:
        config, _ = parse_args(translate(argv))
        return mount(config)
    except MountError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
