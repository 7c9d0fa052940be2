"""``pyunion images``: the images in the store, one row per tag, newest first."""

from __future__ import annotations

import argparse
import json

from unionfs.fs.lazy_layout import has_lazy_layers, image_presence
from unionfs.image import reference
from unionfs.image.cli.common import resolve, short_id
from unionfs.image.cli.filters import (
    label_matches,
    matches,
    parse_filters,
    reference_matches,
    truth,
)
from unionfs.image.cli.output import docker_time, human_size, parse_time, print_table, since
from unionfs.image.cli.template import print_formatted
from unionfs.image.store import Store
from unionfs.image.store import images as store_images

HELP = "List images"
EPILOG = """examples:
  pyunion images                   REPOSITORY  TAG  IMAGE ID  CREATED  SIZE
  pyunion images busybox           only that repository (or REPO:TAG)
  pyunion images -q                image ids, one per image
  pyunion images --format json     one JSON object per line
  pyunion images --format '{{.Repository}}:{{.Tag}}'
  pyunion images --filter dangling=true --filter 'reference=busy*'
"""


def register(commands) -> None:
    p = commands.add_parser("images", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("filter_name", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-a", "--all", action="store_true",
                   help="show all images, the intermediate images of builds too")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image ids")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="reference=, dangling=true|false, label=, before=IMAGE, since=IMAGE")
    p.add_argument("--format", default="table",
                   help="table, json, or a Go template ({{.Repository}}:{{.Tag}}, table …)")
    p.set_defaults(run=run)


def _rows(store: Store, wanted: str | None, *, everything: bool = False) -> list[dict]:
    """One row per tag; an image known only by a repo digest (pulled by digest) gets one row
    per such repository with tag <none>, and an image with neither one <none> row, unless
    it is an intermediate image (one a built image has as parent) and not ``everything``."""
    images = {r["id"]: dict(r) for r in store.db.execute("SELECT id, created, size FROM images")}
    with_children = store_images.parents_with_children(store.db)
    tags: dict[str, list[str]] = {}
    for r in store.db.execute("SELECT name, image_id FROM tags"):
        tags.setdefault(r["image_id"], []).append(r["name"])
    digests: dict[str, list[tuple[str, str]]] = {}
    for r in store.db.execute("SELECT name, image_id FROM repo_digests"):
        repository, _, digest = r["name"].partition("@")
        digests.setdefault(r["image_id"], []).append((repository, digest))
    rows = []
    for image_id, image in images.items():
        known = digests.get(image_id, [])
        entries = [reference.split_name(n) for n in tags.get(image_id, [])]
        tagged = {repository for repository, _ in entries}
        entries += [(repository, "<none>") for repository, _ in known
                    if repository not in tagged]
        if not entries:
            if image_id in with_children and not everything:
                continue
            entries = [("<none>", "<none>")]
        for repository, tag in entries:
            digest = next((d for r, d in known if r == repository), "<none>")
            rows.append({**image, "full_repository": repository, "tag": tag, "digest": digest,
                         "dangling": tag == "<none>" and image_id not in with_children,
                         "repository": reference.shorten_repository(repository)})
    if wanted:
        ref = reference.parse(wanted, default_tag=False)
        rows = [r for r in rows if r["full_repository"] == ref.repository
                and (ref.tag is None or r["tag"] == ref.tag)]
    rows.sort(key=lambda r: (-(_timestamp(r["created"])), r["repository"], r["tag"]))
    return rows


def _size(store: Store, row: dict, lazy: bool) -> str:
    """The image's size; for one pulled lazily and not yet whole, how much of its lazy
    layers' files is here (``lazy 12%``). ``lazy``: whether the store has such layers."""
    found = image_presence(store, row["id"]) if lazy else None
    if found is None:
        return human_size(row["size"])
    present, total = found
    return f"{human_size(row['size'])} (lazy {100 * present // total if total else 100}%)"


def _timestamp(created: str | None) -> float:
    when = parse_time(created)
    return when.timestamp() if when else 0.0


FILTERS = ("reference", "dangling", "label", "before", "since")
HEADERS = {"ID": "IMAGE ID", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT"}


def _filtered(store: Store, rows: list[dict], items: list[str]) -> list[dict]:
    filters = parse_filters(items, FILTERS)
    if not filters:
        return rows
    label_cache: dict[str, dict] = {}

    def labels_of(image_id: str) -> dict:
        if image_id not in label_cache:
            with open(store.blob_path(image_id), "rb") as f:
                config = json.load(f).get("config") or {}
            label_cache[image_id] = config.get("Labels") or {}
        return label_cache[image_id]

    def created_of(text: str) -> float:
        return _timestamp(images_by_id[resolve(store, text).image_id])

    images_by_id = {r["id"]: r["created"] for r in rows}
    for r in store.db.execute("SELECT id, created FROM images"):
        images_by_id.setdefault(r["id"], r["created"])
    kept = []
    for r in rows:
        name = f"{r['repository']}:{r['tag']}"
        tests = {
            "reference": lambda v, r=r, name=name: r["tag"] != "<none>"
            and reference_matches(name, v),
            "dangling": lambda v, r=r: r["dangling"] == truth(v),
            "label": lambda v, r=r: label_matches(labels_of(r["id"]), v),
            "before": lambda v, r=r: _timestamp(r["created"]) < created_of(v),
            "since": lambda v, r=r: _timestamp(r["created"]) > created_of(v),
        }
        if matches(filters, tests):
            kept.append(r)
    return kept


def run(args, store: Store) -> int:
    rows = _filtered(store, _rows(store, args.filter_name, everything=args.all), args.filter)
    show_id = (lambda i: i) if args.no_trunc else short_id
    if args.quiet:
        seen = []
        for r in rows:
            if r["id"] not in seen:
                seen.append(r["id"])
        for image_id in seen:
            print(show_id(image_id))
        return 0
    if args.format != "table":
        print_formatted(args.format, [{
            "Containers": "N/A", "CreatedAt": docker_time(r["created"]),
            "CreatedSince": since(r["created"]), "Digest": r["digest"],
            "ID": show_id(r["id"]), "Repository": r["repository"], "SharedSize": "N/A",
            "Size": human_size(r["size"]), "Tag": r["tag"], "UniqueSize": "N/A",
            "VirtualSize": human_size(r["size"])} for r in rows], HEADERS)
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + [
        "IMAGE ID", "CREATED", "SIZE"]
    lazy = has_lazy_layers(store)
    table = [[r["repository"], r["tag"]] + ([r["digest"]] if args.digests else []) + [
        show_id(r["id"]), since(r["created"]), _size(store, r, lazy)] for r in rows]
    print_table(headers, table)
    return 0
