"""``pyunion images``: the images in the store, one row per tag, newest first."""

from __future__ import annotations

import argparse
import json

from unionfs.image import reference
from unionfs.image.cli.common import short_id
from unionfs.image.cli.output import docker_time, human_size, parse_time, print_table, since
from unionfs.image.store import Store

HELP = "List images"
EPILOG = """examples:
  pyunion images                   REPOSITORY  TAG  IMAGE ID  CREATED  SIZE
  pyunion images busybox           only that repository (or REPO:TAG)
  pyunion images -q                image ids, one per image
  pyunion images --format json     one JSON object per line
"""


def register(commands) -> None:
    p = commands.add_parser("images", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("filter", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-a", "--all", action="store_true",
                   help="show all images (there are no hidden intermediate images)")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image ids")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def _rows(store: Store, wanted: str | None) -> list[dict]:
    query = ("SELECT i.id, i.created, i.size, i.manifest_digest, t.name FROM images i "
             "LEFT JOIN tags t ON t.image_id = i.id")
    rows = [dict(r) for r in store.db.execute(query)]
    digests: dict[str, list[str]] = {}
    for r in store.db.execute("SELECT name, image_id FROM repo_digests"):
        digests.setdefault(r["image_id"], []).append(r["name"])
    if wanted:
        ref = reference.parse(wanted, default_tag=False)
        rows = [r for r in rows if r["name"] and (
            r["name"] == ref.name if ref.tag else reference.split_name(r["name"])[0]
            == ref.repository)]
    for r in rows:
        repo, tag = reference.split_name(r["name"]) if r["name"] else ("<none>", "<none>")
        r["repository"] = reference.shorten_repository(repo) if r["name"] else "<none>"
        r["tag"] = tag
        r["digest"] = next((d.partition("@")[2] for d in digests.get(r["id"], [])
                            if d.partition("@")[0] == repo), "<none>")
    rows.sort(key=lambda r: (-(_timestamp(r["created"])), r["repository"], r["tag"]))
    return rows


def _timestamp(created: str | None) -> float:
    when = parse_time(created)
    return when.timestamp() if when else 0.0


def run(args, store: Store) -> int:
    rows = _rows(store, args.filter)
    show_id = (lambda i: i) if args.no_trunc else short_id
    if args.quiet:
        seen = []
        for r in rows:
            if r["id"] not in seen:
                seen.append(r["id"])
        for image_id in seen:
            print(show_id(image_id))
        return 0
    if args.format == "json":
        for r in rows:
            print(json.dumps({
                "Containers": "N/A", "CreatedAt": docker_time(r["created"]),
                "CreatedSince": since(r["created"]), "Digest": r["digest"],
                "ID": show_id(r["id"]), "Repository": r["repository"], "SharedSize": "N/A",
                "Size": human_size(r["size"]), "Tag": r["tag"], "UniqueSize": "N/A",
                "VirtualSize": human_size(r["size"])}, separators=(",", ":")))
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + [
        "IMAGE ID", "CREATED", "SIZE"]
    table = [[r["repository"], r["tag"]] + ([r["digest"]] if args.digests else []) + [
        show_id(r["id"]), since(r["created"]), human_size(r["size"])] for r in rows]
    print_table(headers, table)
    return 0
