"""``pyunion commit``: a container's changes become a new top layer of a new image."""

from __future__ import annotations

import argparse

from unionfs.image.cli.output import CliProgress
from unionfs.image.cli.tag import parse_new_name
from unionfs.image.container import records
from unionfs.image.container.commit import commit
from unionfs.image.store import Store

HELP = "Create a new image from a container's changes"
EPILOG = """examples:
  pyunion commit -m "add config" web app:2.1
  pyunion commit -c 'CMD ["/bin/httpd", "-f"]' -c "ENV MODE=prod" web app:2.2
  pyunion commit --format estargz web 127.0.0.1:5000/app:2.3   (for pyunion pull --lazy)
"""


def register(commands) -> None:
    p = commands.add_parser("commit", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-m", "--message", default="", help="commit message")
    p.add_argument("-a", "--author", default="", help="author")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, "
                        "LABEL, EXPOSE, VOLUME)")
    p.add_argument("-p", "--pause", default="true", choices=("true", "false"),
                   help="pause a running container while committing (default true)")
    p.add_argument("--format", choices=("oci", "estargz"), default="oci",
                   help="the new layer's blob: gzip (oci, the default) or eStargz, which "
                        "push sends as it is, for lazy pulls (pyunion pull --lazy)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    names = [parse_new_name(args.name).name] if args.name else []
    container = records.get(store, args.container)
    progress = CliProgress(True)
    print(commit(store, container, names, message=args.message, author=args.author,
                 changes=args.change, pause=args.pause == "true", progress=progress,
                 layer_format="estargz" if args.format == "estargz" else "gzip"))
    return 0
