"""``pyunion ps``: containers, with their real state (a dead monitor is noticed)."""

from __future__ import annotations

import datetime as dt
import json
import shlex

from unionfs.image.cli.output import human_duration, print_table
from unionfs.image.container import records, rootfs, runtime
from unionfs.image.container.records import Container
from unionfs.image.store import Store

HELP = "List containers (running ones; -a for all)"


def register(commands) -> None:
    p = commands.add_parser("ps", help=HELP, description=HELP,
                            epilog="example:\n  pyunion ps -a")
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only show container ids")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def _ago(when: float | None) -> str:
    if when is None:
        return ""
    return human_duration(max(dt.datetime.now().timestamp() - when, 0)) + " ago"


def status_text(c: Container, store: Store | None = None) -> str:
    if c.state == "running":
        up = "Up " + human_duration(max(dt.datetime.now().timestamp() - (c.started or 0), 0))
        if store is not None and runtime.is_paused(store, c):
            up += " (Paused)"
        return up if rootfs.is_mounted(c) else up + " (its rootfs mount is gone)"
    if c.state == "exited":
        return f"Exited ({c.exit_code if c.exit_code is not None else -1}) {_ago(c.finished)}"
    return "Created"


def command_text(store: Store, c: Container, no_trunc: bool) -> str:
    from unionfs.image.container.bundle import image_config, process_args

    try:
        args = process_args(image_config(store, c.image_id), c.spec)
    except Exception:
        args = c.spec.command or []
    text = shlex.join(args)
    return f'"{text}"' if no_trunc or len(text) <= 20 else f'"{text[:19]}…"'


def run(args, store: Store) -> int:
    containers = [runtime.refresh(store, c) for c in records.all_containers(store)]
    if not args.all:
        containers = [c for c in containers if c.state == "running"]
    if args.quiet:
        for c in containers:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    rows = [{"ID": c.id if args.no_trunc else c.short_id, "Image": c.image_name,
             "Command": command_text(store, c, args.no_trunc),
             "CreatedAt": _ago(c.created), "Status": status_text(c, store), "Names": c.name,
             "State": c.state, "ExitCode": c.exit_code,
             "Mounts": c.mountpoint if rootfs.is_mounted(c) else ""}
            for c in containers]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, separators=(",", ":")))
        return 0
    print_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"],
                [[r["ID"], r["Image"], r["Command"], r["CreatedAt"], r["Status"], r["Names"]]
                 for r in rows])
    return 0
