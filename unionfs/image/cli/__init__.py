"""``pyunion``: the image manager's command line, one module per command.

Errors are one line on stderr (``pyunion: error: ...``) with exit status 1; usage errors exit 2.
``run`` exits 125 for both, as docker's ``run`` does, so that pyunion's own failures stay apart
from the container's statuses (126: its command cannot be invoked, 127: not found; otherwise its
process's own status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys

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


# command name -> the module under unionfs.image.cli that defines it (one module per command;
# a module may define a related pair, as mount/umount). Only the chosen command's module is
# imported, so that quick commands start quickly.
COMMANDS = {
    "load": "load", "import": "import_image", "images": "images", "tag": "tag", "rmi": "rmi",
    "inspect": "inspect", "history": "history", "save": "save", "df": "df",
    "mount-image": "mount_image", "umount-image": "mount_image",
    "create": "create", "run": "run", "start": "run", "mount": "container_mount",
    "umount": "container_mount", "ps": "ps", "diff": "diff", "commit": "commit",
    "export": "export", "rm": "rm", "stop": "stop", "wait": "stop", "logs": "stop",
    "pull": "pull", "push": "push", "search": "search", "login": "login", "logout": "login",
    "info": "info", "build": "build",
}
# The exit status of a command's failures (usage errors included) where it is not 1.
FAILURE_STATUS = {"run": 125}


def _chosen_command(argv: list[str]) -> str | None:
    """The command named on the command line (the first word that is not a global option)."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyunion", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", metavar="DIR", help="the image store (default: "
                        "$PYUNION_ROOT or /var/lib/pyunion, per user $XDG_DATA_HOME/pyunion)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    chosen = _chosen_command(argv or [])
    wanted = {COMMANDS[chosen]} if chosen in COMMANDS else set(COMMANDS.values())
    registered: set[str] = set()
    for name, module_name in COMMANDS.items():
        if module_name in wanted and module_name not in registered:
            importlib.import_module(f"unionfs.image.cli.{module_name}").register(commands)
            registered.add(module_name)
        elif module_name not in wanted:
            commands.add_parser(name)  # a name argparse knows; its options are not needed
    image = commands.add_parser("image", help="Manage images (prune)",
                                description="Manage images")
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND")
    image_commands.required = True
    if chosen in (None, "image") or chosen not in COMMANDS:
        importlib.import_module("unionfs.image.cli.prune").register(image_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    failure = FAILURE_STATUS.get(_chosen_command(argv) or "", 1)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:
        if e.code == 2 and failure != 1:  # a usage error (argparse has printed it)
            return failure
        raise
    store = Store(args.root or default_root())
    try:
        return args.run(args, store)
    except ImageError as e:
        print(f"pyunion: error: {e}", file=sys.stderr)
        return e.exit_status or failure
    except BaseExceptionGroup as group:  # from concurrent work (trio nurseries)
        first = _first_leaf(group)
        if isinstance(first, KeyboardInterrupt):
            print("pyunion: interrupted", file=sys.stderr)
            return 130
        if not isinstance(first, (ImageError, OSError, sqlite3.Error)):
            raise
        print(f"pyunion: error: {_message(first)}", file=sys.stderr)
        return failure
    except sqlite3.Error as e:
        print(f"pyunion: error: store database: {e}", file=sys.stderr)
        return failure
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return failure
        where = f" ({e.filename})" if e.filename else ""
        print(f"pyunion: error: {e.strerror or e}{where}", file=sys.stderr)
        return failure
    except KeyboardInterrupt:
        print("pyunion: interrupted", file=sys.stderr)
        return 130
    finally:
        store.close()


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first error of a group that is not itself a group, preferring a user-facing one."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, ImageError):
            return leaf
    return leaves[0] if leaves else group


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, ImageError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    if isinstance(error, sqlite3.Error):
        return f"store database: {error}"
    return str(error)


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
