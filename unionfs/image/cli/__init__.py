"""``pyunion``: the image manager's command line, one module per command.

Errors are one line on stderr (``pyunion: error: ...``) with exit status 1; usage errors (an
unknown option, a missing argument: argparse's) exit 125, as docker's and podman's do for every
command. ``run`` and ``exec`` exit 125 for their own failures too, as docker's do, so that
pyunion's failures stay apart from the container's statuses (126: its command cannot be
invoked, 127: not found; otherwise its process's own status).

This module holds only the tables of commands and ``main``, so that a mounting command starts
its daemon (``unionfs.prestart``) before anything heavy is imported; ``dispatch`` parses the
command line and runs the command.
"""

from __future__ import annotations

import os
import sys

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
    "info": "info", "exec": "exec", "cp": "cp", "kill": "control", "restart": "control",
    "pause": "control", "unpause": "control", "rename": "control", "top": "top", "port": "top",
    "version": "version", "snapshotter": "snapshotter", "events": "events", "stats": "stats",
    "attach": "attach", "build": "build",
}
# Commands that mount a union: its daemon is started first (unionfs.prestart), so
# that the daemon's interpreter start-up and imports run beside this command's own.
MOUNTING_COMMANDS = {"run", "start", "mount", "mount-image"}
# The exit status of a command's failures where it is not 1: run's (docker's), exec's
# (podman's; 126 and 127 stay the command's own).
FAILURE_STATUS = {"run": 125, "exec": 125}
USAGE_STATUS = 125  # docker's and podman's for a usage error of any command

# ``pyunion image …`` and ``pyunion container …``: docker's management groups, each word an
# alias of a top-level command: word -> (the command, defaults its parser gets in the group).
GROUPS: dict[str, dict[str, tuple[str, dict]]] = {
    "image": {
        "ls": ("images", {}), "list": ("images", {}), "rm": ("rmi", {}),
        "remove": ("rmi", {}), "inspect": ("inspect", {"kind": "image"}),
        "history": ("history", {}), "pull": ("pull", {}), "push": ("push", {}),
        "tag": ("tag", {}), "save": ("save", {}), "load": ("load", {}),
        "import": ("import", {}), "prune": ("prune", {}),
    },
    "container": {
        "ls": ("ps", {}), "list": ("ps", {}), "ps": ("ps", {}),
        "prune": ("container-prune", {}),
        "inspect": ("inspect", {"kind": "container"}),
        **{word: (word, {}) for word in (
            "create", "run", "start", "stop", "wait", "logs", "rm", "exec", "cp", "kill",
            "restart", "pause", "unpause", "rename", "top", "port", "diff", "commit", "export",
            "mount", "umount", "stats", "attach")},
    },
    "system": {
        "df": ("system-df", {}), "prune": ("system-prune", {}), "events": ("events", {}),
        "info": ("info", {}),
    },
    "network": {
        "create": ("network-create", {}), "ls": ("network-ls", {}),
        "list": ("network-ls", {}), "rm": ("network-rm", {}), "remove": ("network-rm", {}),
        "inspect": ("network-inspect", {}), "prune": ("network-prune", {}),
    },
}
GROUP_HELP = {"image": "Manage images (ls, rm, inspect, history, pull, push, tag, save, load, "
                       "import, prune)",
              "container": "Manage containers (ls, rm, inspect, logs, exec, cp, prune, …: "
                           "the container commands)",
              "system": "Manage the store (df, prune, events, info)",
              "network": "Manage bridge networks (create, ls, rm, inspect, prune)"}
# the module of a command that is only in a group
GROUP_ONLY = {"prune": "prune", "container-prune": "container_prune", "system-df": "system",
              "system-prune": "system",
              **{f"network-{word}": "network"
                 for word in ("create", "ls", "rm", "inspect", "prune")}}


def command_words(argv: list[str]) -> list[str]:
    """The words naming the command: ``["images"]``, ``["image", "ls"]`` (the first word that
    is not a global option, and the next one if the first names a group)."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif word.startswith("--root="):
            continue
        elif not word.startswith("-"):
            if word in GROUPS:
                sub = next((w for w in words if not w.startswith("-")), None)
                return [word] + ([sub] if sub else [])
            return [word]
    return []


def chosen_command(argv: list[str]) -> str | None:
    """The top-level command the command line runs (a group's word resolved: ``image ls`` is
    ``images``)."""
    words = command_words(argv)
    if len(words) == 2 and words[1] in GROUPS[words[0]]:
        return GROUPS[words[0]][words[1]][0]
    return words[0] if words else None


def main(argv: list[str] | None = None) -> int:
    """``pyunion``: a mounting command's daemon is started first, before this process imports
    the parser, the store and the command (``dispatch``), so that they overlap."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = chosen_command(argv) or ""
    if chosen in MOUNTING_COMMANDS and "--help" not in argv and "-h" not in argv:
        from unionfs.prestart import prestart_daemon
        prestart_daemon()
    from unionfs.image.cli.dispatch import run_command

    return run_command(argv, chosen)


def entry() -> None:
    """The ``pyunion`` program: ``main``, then the process ends without the interpreter's
    teardown, which collects some 200 modules: 15 ms of every command, ``run --rm``
    included. What that teardown would do for us is done first: the ``atexit`` functions
    (logging's flush; ``atexit._run_exitfuncs`` is how the interpreter itself runs them) and
    the standard streams' flush. Every command has closed its files and joined its threads
    by the time ``main`` returns; a daemon started ahead and not used sees its pipe close."""
    status = main()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader gone (``pyunion images | head``): nothing more to say
            pass
    os._exit(status)
