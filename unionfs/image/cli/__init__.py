"""``pyunion``: the image manager's command line, one module per command.

Errors are one line on stderr (``pyunion: error: ...``) with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from unionfs.image.cli import (
    commit,
    container_mount,
    create,
    df,
    diff,
    export,
    history,
    images,
    import_image,
    inspect,
    load,
    login,
    mount_image,
    prune,
    ps,
    pull,
    push,
    rm,
    rmi,
    run,
    save,
    search,
    stop,
    tag,
)
from unionfs.image.errors import ImageError
from unionfs.image.store import Store, default_root

DESCRIPTION = """A docker-style image manager whose images are stacks of read-only layers that
pyunion mounts. Layers are stored once, by content, and unpacked in the kernel overlay form."""

EPILOG = """a short session:
  pyunion load -i app.tar              load a `docker save` tarball or an OCI archive
  pyunion images                       list what is in the store
  pyunion history app:2.0              the layer stack, newest first
  pyunion mount-image app:2.0 /mnt     the merged rootfs, read-only
  pyunion save -o copy.tar app:2.0     write it out again
  pyunion rmi app:2.0                  untag / delete (shared layers stay)

The store is --root DIR, $PYUNION_ROOT, or /var/lib/pyunion (root) / $XDG_DATA_HOME/pyunion.
Run 'pyunion COMMAND --help' for a command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyunion", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", metavar="DIR", help="the image store (default: "
                        "$PYUNION_ROOT or /var/lib/pyunion, per user $XDG_DATA_HOME/pyunion)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module in (load, import_image, images, tag, rmi, inspect, history, save, df,
                   mount_image, create, run, container_mount, ps, diff, commit, export, rm,
                   stop, pull, push, search, login):
        module.register(commands)
    image = commands.add_parser("image", help="Manage images (prune)",
                                description="Manage images")
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND")
    image_commands.required = True
    prune.register(image_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(args.root or default_root())
    try:
        return args.run(args, store)
    except ImageError as e:
        print(f"pyunion: error: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(f"pyunion: error: store database: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return 1
        where = f" ({e.filename})" if e.filename else ""
        print(f"pyunion: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyunion: interrupted", file=sys.stderr)
        return 130
    finally:
        store.close()


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
