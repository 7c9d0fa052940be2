"""``pyunion search``: repositories of a registry that match a term, with their tags."""

from __future__ import annotations

import argparse

import trio

from unionfs.image.cli.output import print_table
from unionfs.image.cli.pull import add_registry_options
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.search import search
from unionfs.image.store import Store

HELP = "Search a registry's repositories (its _catalog) for a term"


def register(commands) -> None:
    p = commands.add_parser("search", help=HELP, description=HELP,
                            epilog="example:\n  pyunion search --registry 127.0.0.1:5000 app",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("term", metavar="TERM")
    p.add_argument("--registry", default="docker.io", help="the registry (default docker.io)")
    p.add_argument("--limit", type=int, default=25, help="at most this many results")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate the tag list")
    add_registry_options(p)
    p.set_defaults(run=run)


async def _search(args):
    async with RegistryClient(args.registry, insecure=args.insecure) as client:
        return await search(client, args.term, args.limit)


def run(args, store: Store) -> int:
    found = trio.run(_search, args)
    rows = []
    for name, tags in found:
        text = ", ".join(tags)
        if not args.no_trunc and len(text) > 60:
            text = text[:59] + "…"
        rows.append([f"{args.registry}/{name}", text])
    print_table(["NAME", "TAGS"], rows)
    return 0
