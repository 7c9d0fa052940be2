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
EPILOG = """examples:
  pyunion search 127.0.0.1:5000/app             the registry from the term, as docker's
  pyunion search --registry 127.0.0.1:5000 app
"""


def register(commands) -> None:
    p = commands.add_parser("search", help=HELP, description=HELP,
                            epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("term", metavar="TERM")
    p.add_argument("--registry", help="the registry (default: the term's own, as in "
                   "REGISTRY/TERM, else docker.io)")
    p.add_argument("--limit", type=int, default=25, help="at most this many results")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate the tag list")
    add_registry_options(p)
    p.set_defaults(run=run)


def registry_and_term(text: str, registry: str | None) -> tuple[str, str]:
    """docker's reading of ``REGISTRY/TERM``: a first part with a dot, a colon or that is
    ``localhost`` names the registry (``--registry`` wins)."""
    first, slash, rest = text.partition("/")
    if slash and rest and ("." in first or ":" in first or first == "localhost"):
        return registry or first, rest
    return registry or "docker.io", text


async def _search(registry: str, term: str, args):
    async with RegistryClient(registry, insecure=args.insecure) as client:
        return await search(client, term, args.limit)


def run(args, store: Store) -> int:
    registry, term = registry_and_term(args.term, args.registry)
    args.registry = registry
    found = trio.run(_search, registry, term, args)
    rows = []
    for name, tags in found:
        text = ", ".join(tags)
        if not args.no_trunc and len(text) > 60:
            text = text[:59] + "…"
        rows.append([f"{args.registry}/{name}", text])
    print_table(["NAME", "TAGS"], rows)
    return 0
