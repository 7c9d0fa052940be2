"""``pyunion exec``: run a command in a running container, in its namespaces."""

from __future__ import annotations

import argparse
import sys

from unionfs.image.container import records
from unionfs.image.container.exec import ExecSpec, exec_process
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "Run a command in a running container"
EPILOG = """examples:
  pyunion exec web ls /srv                 the container's view of its files
  pyunion exec -it web sh                  an interactive shell beside its process
  pyunion exec -u app -w /tmp -e X=1 web env
  pyunion exec -d web touch /tmp/flag      in the background
The command's exit status is exec's; exec's own failures exit 125, 126 when the command cannot
be invoked, 127 when it is not found.
"""


def register(commands) -> None:
    p = commands.add_parser("exec", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-d", "--detach", action="store_true", help="run it in the background")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable (KEY alone takes the caller's value)")
    p.add_argument("-u", "--user", help="user[:group] or uid[:gid] to run as")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    if not args.command:
        raise ImageError("exec needs a command to run")
    if args.tty and not args.detach and not sys.stdin.isatty():
        raise ImageError("the input device is not a TTY (drop -t, or run from a terminal)", 1)
    container = records.get(store, args.container)
    return exec_process(store, container, ExecSpec(
        command=args.command, env=args.env, user=args.user, workdir=args.workdir,
        tty=args.tty, interactive=args.interactive, detach=args.detach))
