"""What the commands share: finding images by name, id or id prefix; names for display."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from unionfs.image import reference
from unionfs.image.errors import Conflict, ImageError, NotFound
from unionfs.image.store import Store

# what an image id or a unique prefix of one may look like
ID_PREFIX = re.compile(r"(sha256:)?([0-9a-f]{1,64})")


@dataclass
class Resolved:
    image_id: str
    name: str | None  # the full name it was found by, if any


def short_id(image_id: str) -> str:
    return image_id.partition(":")[2][:12]


def short_name(name: str) -> str:
    repository, tag = reference.split_name(name)
    return f"{reference.shorten_repository(repository)}:{tag}"


def resolve(store: Store, text: str) -> Resolved:
    """An image by name (normalised), repo digest, full id or unique id prefix."""
    db = store.db
    if reference.looks_like_reference(text):
        ref = reference.parse(text)
        if ref.digest:
            row = db.execute("SELECT image_id FROM repo_digests WHERE name = ?",
                             (f"{ref.repository}@{ref.digest}",)).fetchone()
            if row is None and ref.tag is None:
                row = db.execute("SELECT id AS image_id FROM images WHERE manifest_digest = ?",
                                 (ref.digest,)).fetchone()
            if row is not None:
                return Resolved(row["image_id"], None)
        else:
            row = db.execute("SELECT image_id FROM tags WHERE name = ?", (ref.name,)).fetchone()
            if row is not None:
                return Resolved(row["image_id"], ref.name)
    match = ID_PREFIX.fullmatch(text)
    if match:
        prefix = "sha256:" + match.group(2)
        rows = db.execute("SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 11",
                          (prefix, prefix + "g")).fetchall()
        if len(rows) == 1:
            return Resolved(rows[0]["id"], None)
        if len(rows) > 1:
            candidates = ", ".join(short_id(r["id"]) for r in rows[:10])
            raise Conflict(f"{text} is an ambiguous image id prefix: it matches {candidates}"
                           + (" and more" if len(rows) > 10 else ""))
    raise NotFound(f"No such image: {text}")


def image_names(store: Store, image_id: str) -> list[str]:
    return [r["name"] for r in store.db.execute(
        "SELECT name FROM tags WHERE image_id = ? ORDER BY name", (image_id,))]


def image_users(store: Store, image_id: str) -> list[str]:
    """What keeps an image in use: containers (of any state) and live mount-image mounts."""
    from unionfs.image.container.records import users_of_image
    from unionfs.image.daemons import mount_is_live

    users = users_of_image(store, image_id)
    for row in store.db.execute("SELECT mountpoint, pid FROM mounts WHERE image_id = ?",
                                (image_id,)):
        if mount_is_live(row["mountpoint"], row["pid"]):
            users.append(f"mounted at {row['mountpoint']}")
    return users


def image_platform(store: Store, image_id: str) -> str:
    """``os/architecture[/variant]`` as the image's config records it."""
    import json

    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    return "/".join(str(config[key]) for key in ("os", "architecture", "variant")
                    if config.get(key))


def warn_foreign_platform(store: Store, image_id: str) -> None:
    """docker's warning, on stderr, for an image of another platform than this machine's."""
    from unionfs.image.archive.formats import Platform

    host = Platform.host()
    found = image_platform(store, image_id)
    parts = found.split("/")
    if len(parts) < 2 or (parts[0], parts[1]) == (host.os, host.architecture):
        return
    import sys

    print(f"WARNING: The requested image's platform ({found}) does not match the detected "
          f"host platform ({host.os}/{host.architecture}) and no specific platform was "
          "requested", file=sys.stderr, flush=True)


def parse_labels(items: list[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` options (``run``, ``create``, ``network create``) as a dict."""
    labels = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise ImageError(f"invalid label {item!r} (KEY=VALUE)")
        labels[key] = value
    return labels


def add_lazy_rate_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--lazy-rate`` (pull, mount-image): here, not in cli.pull, whose registry client
    (trio, httpx: 0.1 s of imports) a mount must not wait for."""
    p.add_argument("--lazy-rate", type=_rate, metavar="RATE",
                   help=f"bytes a second at which {what} (e.g. 4M, 512k; 0: not at all)")


def _rate(text: str) -> int:
    from unionfs.fs.options import MountError, parse_rate

    try:
        return parse_rate(text)
    except MountError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
