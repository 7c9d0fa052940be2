"""The ``pyunion`` command line parsed (argparse, only the chosen command's module imported)
and its command run, errors reported as one line (see ``unionfs.image.cli``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys

from unionfs.image.cli import (
    COMMANDS,
    FAILURE_STATUS,
    GROUP_HELP,
    GROUP_ONLY,
    GROUPS,
    USAGE_STATUS,
    command_words,
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


class _Renaming:
    """Stands for a group's subparsers while a command module registers: the parser of the
    command wanted is made under the group's word; the module's other commands go nowhere."""

    def __init__(self, subparsers, command: str, word: str) -> None:
        self.subparsers, self.command, self.word = subparsers, command, word
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name != self.command:
            return argparse.ArgumentParser(add_help=False)
        self.parser = self.subparsers.add_parser(self.word, **kwargs)
        return self.parser


def _module_of(command: str) -> str:
    return COMMANDS.get(command) or GROUP_ONLY[command]


def _register_group(commands, group: str, wanted_word: str | None) -> None:
    """``pyunion image …`` / ``container …``; only the wanted word's module is imported (all
    of them when none is named, for the group's help)."""
    parser = commands.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
    sub = parser.add_subparsers(dest=f"{group}_command", metavar="COMMAND")
    sub.required = True
    for word, (command, defaults) in GROUPS[group].items():
        if wanted_word in (None, word):
            module = importlib.import_module(f"unionfs.image.cli.{_module_of(command)}")
            renaming = _Renaming(sub, command, word)
            module.register(renaming)
            assert renaming.parser is not None
            renaming.parser.set_defaults(**defaults)  # over the module's own
        else:
            sub.add_parser(word)


def innermost_parser(parser: argparse.ArgumentParser,
                     argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command the command line names, for its usage in errors."""
    current = parser
    for word in command_words(argv):
        action = next((a for a in current._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
        if action is None or word not in action.choices:
            break
        current = action.choices[word]
    return current


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyunion", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--version", action=_PrintVersion)
    parser.add_argument("--root", metavar="DIR", help="the image store (default: "
                        "$PYUNION_ROOT or /var/lib/pyunion, per user $XDG_DATA_HOME/pyunion)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    words = command_words(argv or [])
    chosen = words[0] if words else None
    if chosen in COMMANDS:
        wanted = {COMMANDS[chosen]}
    else:
        wanted = set() if chosen in GROUPS else set(COMMANDS.values())
    registered: set[str] = set()
    for name, module_name in COMMANDS.items():
        if module_name in wanted and module_name not in registered:
            importlib.import_module(f"unionfs.image.cli.{module_name}").register(commands)
            registered.add(module_name)
        elif module_name not in wanted:
            commands.add_parser(name)  # a name argparse knows; its options are not needed
    for group in GROUPS:
        if chosen == group or chosen not in COMMANDS:
            _register_group(commands, group, words[1] if len(words) == 2 else None)
        else:
            commands.add_parser(group)
    return parser


class _PrintVersion(argparse.Action):
    """``--version``: the version is looked up (importlib.metadata, ~10 ms) only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         nargs=0, help="show pyunion's version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("pyunion")
    except PackageNotFoundError:
        number = "unknown"
    return f"pyunion version {number}"


def run_command(argv: list[str], chosen: str) -> int:
    """Parses ``argv`` (whose command is ``chosen``) and runs the command; its exit status,
    errors reported as one line."""
    failure = FAILURE_STATUS.get(chosen, 1)
    try:
        parser = build_parser(argv)
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # the command's own usage, not the top-level one
            innermost_parser(parser, argv).error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:
        if e.code == 2:  # a usage error (argparse has printed it)
            return USAGE_STATUS
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
