"""``pyunion system df`` and ``pyunion system prune``: docker's summary of the space images
and containers use, and the removal of what nothing uses.

pyunion has no named volumes (``-v`` binds host paths) and no build cache: their rows are
docker's, always zero. Sizes are uncompressed layer sizes (each layer counted once, however
many images share it) and, for a container, the bytes of the files in its upper layer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from unionfs.image.cli.common import image_names, image_users, short_id, short_name
from unionfs.image.cli.network import prune_networks
from unionfs.image.cli.output import human_duration, human_size, print_table, since
from unionfs.image.cli.prune import prune_images
from unionfs.image.cli.template import print_formatted
from unionfs.image.container import records, session
from unionfs.image.container.records import Container
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

DF_HELP = "Show the space images and containers use (docker's system df)"
PRUNE_HELP = ("Remove stopped containers, unused networks and dangling (with -a: all unused) "
              "images")
PRUNE_EPILOG = """examples:
  pyunion system prune -f          stopped containers, unused networks, dangling images
  pyunion system prune -a -f       and every image no container uses
Without -f it asks first (reading the answer from stdin: anything but y is no).
"""


def register(commands) -> None:
    d = commands.add_parser("system-df", help=DF_HELP, description=DF_HELP,  # as "df"
                            epilog="examples:\n  pyunion system df\n  pyunion system df -v\n"
                                   "  pyunion system df --format '{{.Type}} {{.Size}}'",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("-v", "--verbose", action="store_true",
                   help="per image and per container")
    d.add_argument("--format", metavar="TEMPLATE",
                   help="json, or a Go template (.Type .TotalCount .Active .Size .Reclaimable)")
    d.set_defaults(run=run_df)
    p = commands.add_parser("system-prune", help=PRUNE_HELP, description=PRUNE_HELP,
                            epilog=PRUNE_EPILOG,  # as "prune"
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--all", action="store_true",
                   help="remove every image no container uses, not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(run=run_prune)


# ---------------------------------------------------------------------------------- df


def upper_size(store: Store, container: Container) -> int:
    """The bytes of the files in the container's upper layer (docker's SizeRw)."""
    total = 0
    top = os.path.join(records.container_dir(store, container.id), "upper")
    for directory, dirs, files in os.walk(top):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


@dataclass
class Usage:
    images: list[dict]              # id, created, names, layers, containers
    layer_sizes: dict[str, int]     # chain id -> uncompressed size
    containers: list[tuple[Container, int]]  # with their upper's size

    def image_bytes(self, image_ids) -> int:
        """The layers of these images, each counted once."""
        chains = {c for i in self.images if i["id"] in image_ids for c in i["layers"]}
        return sum(self.layer_sizes.get(c, 0) for c in chains)


def measure(store: Store) -> Usage:
    db = store.db
    layer_sizes = {r["chain_id"]: r["tar_size"] or 0
                   for r in db.execute("SELECT chain_id, tar_size FROM layers")}
    images = []
    for row in db.execute("SELECT id, created FROM images"):
        images.append({"id": row["id"], "created": row["created"],
                       "names": image_names(store, row["id"]),
                       "layers": [r["chain_id"] for r in db.execute(
                           "SELECT DISTINCT chain_id FROM image_layers WHERE image_id = ?",
                           (row["id"],))],
                       "containers": len(image_users(store, row["id"]))})
    containers = [(c, upper_size(store, c)) for c in
                  (session.refresh(store, c) for c in records.all_containers(store))]
    return Usage(images, layer_sizes, containers)


def _reclaimable(part: int, whole: int) -> str:
    return f"{human_size(part)} ({round(100 * part / whole) if whole else 0}%)"


def run_df(args, store: Store) -> int:
    usage = measure(store)
    every = {i["id"] for i in usage.images}
    active = {i["id"] for i in usage.images if i["containers"]}
    total = usage.image_bytes(every)
    freed = total - usage.image_bytes(active)
    container_total = sum(size for _, size in usage.containers)
    running = [c for c, _ in usage.containers if c.state == "running"]
    stopped_size = sum(size for c, size in usage.containers if c.state != "running")
    rows = [
        {"Type": "Images", "TotalCount": len(every), "Active": len(active),
         "Size": human_size(total), "Reclaimable": _reclaimable(freed, total)},
        {"Type": "Containers", "TotalCount": len(usage.containers), "Active": len(running),
         "Size": human_size(container_total),
         "Reclaimable": _reclaimable(stopped_size, container_total)},
        {"Type": "Local Volumes", "TotalCount": 0, "Active": 0, "Size": "0B",
         "Reclaimable": "0B"},
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": "0B",
         "Reclaimable": "0B"},
    ]
    if args.format:
        print_formatted(args.format, rows)
        return 0
    if not args.verbose:
        print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
                    [[r["Type"], str(r["TotalCount"]), str(r["Active"]), r["Size"],
                      r["Reclaimable"]] for r in rows])
        return 0
    _verbose(usage)
    return 0


def _verbose(usage: Usage) -> None:
    users: dict[str, int] = {}
    for image in usage.images:
        for chain in image["layers"]:
            users[chain] = users.get(chain, 0) + 1
    print("Images space usage:\n")
    rows = []
    for image in usage.images:
        unique = sum(usage.layer_sizes.get(c, 0) for c in image["layers"] if users[c] == 1)
        shared = sum(usage.layer_sizes.get(c, 0) for c in image["layers"] if users[c] > 1)
        for name in image["names"] or [None]:
            repo, _, tag = short_name(name).rpartition(":") if name else ("<none>", "",
                                                                          "<none>")
            rows.append([repo, tag, short_id(image["id"]), since(image["created"]),
                         human_size(unique + shared), human_size(shared), human_size(unique),
                         str(image["containers"])])
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                 "UNIQUE SIZE", "CONTAINERS"], rows)
    print("\nContainers space usage:\n")
    print_table(["CONTAINER ID", "IMAGE", "SIZE", "CREATED", "STATUS", "NAMES"], [
        [c.short_id, c.image_name, human_size(size),
         human_duration(max(time.time() - c.created, 0)) + " ago", c.state, c.name]
        for c, size in usage.containers])
    print("\nLocal Volumes space usage:\n")
    print_table(["VOLUME NAME", "LINKS", "SIZE"], [])
    print("\nBuild cache usage: 0B\n")


# ------------------------------------------------------------------------------- prune


def _confirmed(all_images: bool) -> bool:
    images = ("all images without at least one container associated to them" if all_images
              else "all dangling images")
    print("WARNING! This will remove:\n  - all stopped containers\n"
          "  - all networks not used by at least one container\n"
          f"  - {images}\n\nAre you sure you want to continue? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print()
    return answer.strip().lower() in ("y", "yes")


def run_prune(args, store: Store) -> int:
    if not args.force and not _confirmed(args.all):
        return 0
    status = 0
    removed, freed = [], 0
    for container in records.all_containers(store):
        container = session.refresh(store, container)
        if container.state == "running":
            continue
        size = upper_size(store, container)
        try:
            Session(store, container).remove(force=False)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
            continue
        removed.append(container.id)
        freed += size
    if removed:
        print("Deleted Containers:\n" + "\n".join(removed) + "\n")
    pruned_networks = prune_networks(store)
    if pruned_networks:
        print("Deleted Networks:\n" + "\n".join(pruned_networks) + "\n")
    untagged, deleted, image_bytes = prune_images(store, args.all)
    if untagged or deleted:
        print("Deleted Images:")
        for name in untagged:
            print(f"untagged: {name}")
        for image_id in deleted:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {human_size(freed + image_bytes)}")
    return status

