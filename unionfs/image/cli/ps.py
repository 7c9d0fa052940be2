"""``pyunion ps``: containers, with their real state (a dead monitor is noticed)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex

from unionfs.image.cli.common import resolve
from unionfs.image.cli.filters import label_matches, matches, parse_filters
from unionfs.image.cli.output import human_duration, print_table
from unionfs.image.cli.template import print_formatted
from unionfs.image.container import network, records, rootfs, runtime, session
from unionfs.image.container.records import Container
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

HELP = "List containers (running ones; -a for all)"
EPILOG = """examples:
  pyunion ps -a
  pyunion ps -a --filter status=exited --filter ancestor=busybox
  pyunion ps --format '{{.Names}}: {{.Status}}'
  pyunion ps -a --format json                one JSON object per line
"""
FILTERS = ("status", "name", "id", "ancestor", "exited", "label", "before", "since")
HEADERS = {"ID": "CONTAINER ID", "CreatedAt": "CREATED AT", "RunningFor": "CREATED"}


def register(commands) -> None:
    p = commands.add_parser("ps", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only show container ids")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="status=, name=, id=, ancestor=, exited=, label=, before=, since=")
    p.add_argument("-n", "--last", type=int, default=-1, metavar="N",
                   help="the N last created containers (any state)")
    p.add_argument("-l", "--latest", action="store_true", help="the last created container")
    p.add_argument("--format", default="table",
                   help="table, json, or a Go template ({{.Names}}, table {{.ID}}\\t…)")
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


def _state(store: Store, c: Container) -> str:
    return "paused" if runtime.is_paused(store, c) else c.state


def _filtered(store: Store, containers: list[Container], items: list[str]) -> list[Container]:
    filters = parse_filters(items, FILTERS)
    if not filters:
        return containers
    by_name = {c.name: c for c in containers}

    def anchor(text: str) -> Container:
        found = by_name.get(text) or next((c for c in containers if c.id.startswith(text)),
                                          None)
        if found is None:
            raise ImageError(f"No such container: {text}")
        return found

    def ancestor(c: Container, text: str) -> bool:
        try:
            wanted = resolve(store, text).image_id
        except ImageError:
            return False
        return c.image_id == wanted

    kept = []
    for c in containers:
        labels = c.spec.labels
        tests = {
            "status": lambda v, c=c: _state(store, c) == v,
            "name": lambda v, c=c: re.search(v, c.name) is not None,
            "id": lambda v, c=c: c.id.startswith(v),
            "ancestor": lambda v, c=c: ancestor(c, v),
            "exited": lambda v, c=c: c.state == "exited" and str(c.exit_code) == v,
            "label": lambda v, labels=labels: label_matches(labels, v),
            "before": lambda v, c=c: c.created < anchor(v).created,
            "since": lambda v, c=c: c.created > anchor(v).created,
        }
        if matches(filters, tests):
            kept.append(c)
    return kept


def _row(store: Store, c: Container, no_trunc: bool) -> dict:
    mounted = rootfs.is_mounted(c)
    return {"ID": c.id if no_trunc else c.short_id, "Image": c.image_name,
            "Command": command_text(store, c, no_trunc),
            "CreatedAt": dt.datetime.fromtimestamp(c.created, dt.UTC).strftime(
                "%Y-%m-%d %H:%M:%S +0000 UTC"),
            "Created": int(c.created), "RunningFor": _ago(c.created),
            "Status": status_text(c, store), "Names": c.name, "State": _state(store, c),
            "ExitCode": c.exit_code, "Labels": ",".join(f"{k}={v}" for k, v in
                                                        sorted(c.spec.labels.items())),
            "Mounts": c.mountpoint if mounted else "", "Ports": _ports(store, c),
            "Networks": c.spec.network,
            "Size": "", "LocalVolumes": "0"}


def _ports(store: Store, c: Container) -> str:
    """docker's PORTS: ``0.0.0.0:8080->80/tcp, …`` while it runs on a bridge."""
    if c.state != "running":
        return ""
    return network.shown_ports(network.published_ports(store, c.id, c.spec.network))


def run(args, store: Store) -> int:
    containers = [session.refresh(store, c) for c in records.all_containers(store)]
    if args.latest:
        args.last = 1
    if args.last >= 0:
        containers = containers[:args.last]
    elif not args.all and not any(f.startswith(("status=", "exited=")) for f in args.filter):
        containers = [c for c in containers if c.state == "running"]
    containers = _filtered(store, containers, args.filter)
    if args.quiet:
        for c in containers:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    rows = [_row(store, c, args.no_trunc) for c in containers]
    if args.format != "table":
        print_formatted(args.format, rows, HEADERS)
        return 0
    print_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                [[r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"],
                  r["Names"]] for r in rows])
    return 0
