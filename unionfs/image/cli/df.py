"""``pyunion df``: space used by images, layers (shared and unique) and blobs."""

from __future__ import annotations

from collections import Counter

from unionfs.fs.lazy_layout import presence
from unionfs.image.cli.common import image_names, image_users, short_id, short_name
from unionfs.image.cli.output import human_size, print_table, since
from unionfs.image.store import Store

HELP = "Show the store's disk usage"


def register(commands) -> None:
    p = commands.add_parser("df", help=HELP, description=HELP,
                            epilog="example:\n  pyunion df -v")
    p.add_argument("-v", "--verbose", action="store_true", help="per image and per layer")
    p.set_defaults(run=run)


def _percent(part: int, whole: int) -> str:
    return f"{human_size(part)} ({100 * part // whole if whole else 0}%)"


def _present(store: Store, chain_id: str) -> str:
    """How much of a lazily pulled layer is here (``pull --lazy``); "all" for the others."""
    found = presence(store, chain_id)
    if found is None:
        return "all"
    present, total = found
    return f"{human_size(present)} of {human_size(total)} (lazy)"


def run(args, store: Store) -> int:
    db = store.db
    images = [dict(r) for r in db.execute("SELECT id, created FROM images")]
    layers = {r["chain_id"]: r["tar_size"] for r in db.execute(
        "SELECT chain_id, tar_size FROM layers")}
    uses = {i["id"]: [r["chain_id"] for r in db.execute(
        "SELECT DISTINCT chain_id FROM image_layers WHERE image_id = ?", (i["id"],))]
        for i in images}
    users = Counter(d for ds in uses.values() for d in ds)
    blobs = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
    active = {i["id"] for i in images if image_users(store, i["id"])}
    kept = {d for i in active for d in uses[i]}
    layer_total = sum(layers.values())
    reclaimable = sum(size for d, size in layers.items() if d not in kept)
    shared = [d for d, n in users.items() if n > 1]
    print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [
        ["Images", str(len(images)), str(len(active)), human_size(layer_total),
         _percent(reclaimable, layer_total)],
        ["Layers", str(len(layers)), f"{len(shared)} shared", human_size(layer_total),
         _percent(sum(s for d, s in layers.items() if d not in users), layer_total)],
        ["Blobs", str(blobs[0]), "", human_size(blobs[1]), ""],
    ])
    if args.verbose:
        print("\nImages space usage:\n")
        rows = []
        for image in images:
            unique = sum(layers.get(d, 0) for d in uses[image["id"]] if users[d] == 1)
            shared_size = sum(layers.get(d, 0) for d in uses[image["id"]] if users[d] > 1)
            names = image_names(store, image["id"]) or [None]
            for name in names:
                repo, _, tag = short_name(name).rpartition(":") if name else ("<none>", "",
                                                                              "<none>")
                rows.append([repo, tag, short_id(image["id"]), since(image["created"]),
                             human_size(unique + shared_size), human_size(shared_size),
                             human_size(unique)])
        print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                     "UNIQUE SIZE"], rows)
        print("\nLayers space usage:\n")
        print_table(["LAYER", "SIZE", "IMAGES", "PRESENT"], [
            [d[7:19], human_size(size), str(users.get(d, 0)), _present(store, d)]
            for d, size in layers.items()])
    return 0
