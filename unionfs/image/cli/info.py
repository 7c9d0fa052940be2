"""``pyunion info``: the store, the mode in use, and what the machine offers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys

from unionfs.image.container.idmap import rootless_id_map
from unionfs.image.store import Store

HELP = "Show the store, the mode in use (root or rootless) and the tools found"


def register(commands) -> None:
    p = commands.add_parser("info", help=HELP, description=HELP,
                            epilog="example:\n  pyunion info --format json")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=run)


def _fuse_access() -> str:
    if not os.path.exists("/dev/fuse"):
        return "missing (is the fuse module loaded?)"
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "usable"
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    return f"not usable by this user (mode {mode:04o}; fusermount3 opens it as you)"


def _passthrough() -> str:
    from unionfs.fs import passthrough  # (pyfuse3 and trio: only for this command)

    return passthrough.describe()


def describe(store: Store) -> dict:
    root = os.geteuid() == 0
    counts = {"images": 0, "layers": 0, "containers": 0}
    if store.exists():
        for table in counts:
            counts[table] = store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return {
        "store": store.root,
        "mode": "root" if root else "rootless (layer files are the user's; their owners, "
                "modes and device nodes are kept in user.containers.override_stat)",
        "container_ids": "all (root)" if root else rootless_id_map().describe(),
        "whiteouts": "kernel overlay form (0/0 devices, trusted.overlay.opaque)" if root else
                     "OCI form (.wh. files)",
        "user": f"{os.geteuid()}:{os.getegid()}",
        "dev_fuse": _fuse_access(),
        "fusermount3": shutil.which("fusermount3") or "missing",
        "passthrough": _passthrough(),
        "runtimes": {name: shutil.which(name) or "missing" for name in ("runc", "crun")},
        "python": sys.version.split()[0],
        **counts,
    }


def run(args, store: Store) -> int:
    info = describe(store)
    if args.format == "json":
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key.replace('_', ' ')}: {value}")
    return 0
