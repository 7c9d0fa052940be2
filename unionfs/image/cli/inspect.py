"""``pyunion inspect``: an image's details as JSON (docker's shape, plus its layer dirs)."""

from __future__ import annotations

import json
import sys

from unionfs.image.cli.common import image_names, resolve, short_name
from unionfs.image.errors import ImageError
from unionfs.image.mounts import layer_dirs
from unionfs.image.store import Store

HELP = "Display detailed information on one or more images"


def register(commands) -> None:
    p = commands.add_parser("inspect", help=HELP, description=HELP,
                            epilog="example:\n  pyunion inspect app:2.0")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(run=run)


def describe(store: Store, image_id: str) -> dict:
    row = store.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    digests = [r["name"] for r in store.db.execute(
        "SELECT name FROM repo_digests WHERE image_id = ?", (image_id,))]
    dirs = layer_dirs(store, image_id)
    return {
        "Id": image_id,
        "RepoTags": [short_name(n) for n in image_names(store, image_id)],
        "RepoDigests": digests,
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant", ""),
        "Os": config.get("os", ""),
        "Config": config.get("config", {}),
        "RootFS": {"Type": "layers", "Layers": config.get("rootfs", {}).get("diff_ids", [])},
        "Size": row["size"],
        "ManifestDigest": row["manifest_digest"],
        "LayerDirs": dirs,
        "GraphDriver": {"Name": "pyunion", "Data": {"LowerDir": ":".join(reversed(dirs))}},
    }


def run(args, store: Store) -> int:
    found, status = [], 0
    for text in args.images:
        try:
            found.append(describe(store, resolve(store, text).image_id))
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    print(json.dumps(found, indent=4))
    return status
