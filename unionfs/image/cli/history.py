"""``pyunion history``: the layer stack of an image, newest first."""

from __future__ import annotations

import json

from unionfs.image.cli.common import resolve, short_id
from unionfs.image.cli.output import docker_time, human_size, print_table, since
from unionfs.image.cli.template import print_formatted
from unionfs.image.store import Store, images

HELP = "Show the history of an image"


def register(commands) -> None:
    p = commands.add_parser("history", help=HELP, description=HELP,
                            epilog="example:\n  pyunion history app:2.0")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-H", "--human", action="store_true", default=True,
                   help="human readable sizes and dates (default)")
    p.add_argument("--no-human", dest="human", action="store_false")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image ids")
    p.add_argument("--format", default="table",
                   help="table, json, or a Go template ({{.ID}} {{.CreatedBy}}, table …)")
    p.set_defaults(run=run)


def history_rows(store: Store, image_id: str) -> list[dict]:
    """One row per history entry (or per layer, when the config has no history), newest first."""
    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    sizes = [r["tar_size"] for r in store.db.execute(
        "SELECT l.tar_size FROM image_layers il JOIN layers l ON l.chain_id = il.chain_id "
        "WHERE il.image_id = ? ORDER BY il.position", (image_id,))]
    history = config.get("history") if isinstance(config.get("history"), list) else []
    if not history:
        history = [{"created": config.get("created"), "created_by": ""} for _ in sizes]
    rows, layer = [], 0
    for entry in history:
        empty = bool(entry.get("empty_layer"))
        size = 0 if empty or layer >= len(sizes) else sizes[layer]
        if not empty:
            layer += 1
        rows.append({"created": entry.get("created"), "created_by": entry.get("created_by", ""),
                     "comment": entry.get("comment", ""), "size": size})
    rows.reverse()
    for row in rows:
        row["id"] = "<missing>"
    _name_step_images(store, image_id, rows)
    return rows


def _name_step_images(store: Store, image_id: str, rows: list[dict]) -> None:
    """Puts each image of the build chain still in the store (the image, the parent it was
    built on, and so on: ``store.images``) beside the newest history entry it has, as
    docker's history shows intermediate images; the other entries stay ``<missing>``."""
    if not rows:
        return
    rows[0]["id"] = image_id
    last = 0
    current = images.parent_of(store.db, image_id)
    while current is not None:
        try:
            with open(store.blob_path(current), "rb") as f:
                history = json.load(f).get("history")
        except (OSError, ValueError):
            return
        position = len(rows) - len(history if isinstance(history, list) else [])
        if not last < position < len(rows):  # not an ancestor's history after all
            return
        rows[position]["id"] = current
        last = position
        current = images.parent_of(store.db, current)


def run(args, store: Store) -> int:
    image_id = resolve(store, args.image).image_id
    rows = history_rows(store, image_id)

    def show_id(i: str) -> str:
        return i if args.no_trunc or i == "<missing>" else short_id(i)

    if args.quiet:
        for row in rows:
            print(show_id(row["id"]))
        return 0
    if args.format != "table":
        print_formatted(args.format, [
            {"ID": show_id(row["id"]), "CreatedAt": docker_time(row["created"]),
             "CreatedSince": since(row["created"]), "CreatedBy": row["created_by"],
             "Size": human_size(row["size"]), "Comment": row["comment"]} for row in rows],
            {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedBy": "CREATED BY"})
        return 0
    table = []
    for row in rows:
        created_by = " ".join(row["created_by"].split()) if not args.no_trunc \
            else row["created_by"]
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        table.append([show_id(row["id"]),
                      since(row["created"]) if args.human else (row["created"] or ""),
                      created_by,
                      human_size(row["size"]) if args.human else str(row["size"]),
                      row["comment"]])
    print_table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], table)
    return 0
