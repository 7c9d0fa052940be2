"""``pyunion events``: the store's event log (recorded by the commands that act: see
unionfs.image.events), printed as docker prints it, past events by ``--since``/``--until``,
new ones as they happen (until ``--until``, or Ctrl-C)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from unionfs.image import events
from unionfs.image.cli.filters import label_matches, matches, parse_filters
from unionfs.image.cli.stop import parse_since
from unionfs.image.cli.template import print_formatted, render
from unionfs.image.events import Event
from unionfs.image.store import Store

HELP = "Show the store's events (containers created, started, died, …; images pulled, …)"
EPILOG = """examples:
  pyunion events                                  new events as they happen (Ctrl-C ends)
  pyunion events --since 10m --until 0s           the last ten minutes, then exit
  pyunion events --since 1h --until 0s --filter container=web --filter event=die
  pyunion events --since 1h --until 0s --format '{{.Action}} {{.Actor.Attributes.name}}'
Filters: container=NAME|ID, event=ACTION, type=container|image, image=NAME, label=KEY[=VALUE].
Recorded are a container's create, start, die (exitCode), kill (signal), stop, pause,
unpause, rename (oldName), restart, attach, destroy; an image's pull, tag, untag, delete.
"""
FILTERS = ("container", "event", "type", "image", "label")


def register(commands) -> None:
    p = commands.add_parser("events", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--since", metavar="TIME",
                   help="events since TIME: a Unix time, RFC 3339, or a duration (10m)")
    p.add_argument("--until", metavar="TIME",
                   help="events until TIME (as --since); without it, follow new events")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only matching events (see below)")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="json, or a Go template over docker's fields (.Type, .Action, .ID, "
                        ".Actor.Attributes, .Time, .TimeNano, …)")
    p.set_defaults(run=run)


def event_time(nanos: int) -> str:
    """docker's RFC 3339 with nanoseconds, in local time (``Z`` for UTC)."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds).astimezone()
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{rest:09d}{zone}"


def default_line(event: Event) -> str:
    """``TIME TYPE ACTION ID (key=value, …)``, the attributes sorted, as docker's."""
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
    return (f"{event_time(event.time_nano)} {event.type} {event.action} {event.actor_id}"
            + (f" ({attributes})" if attributes else ""))


def _tests(event: Event) -> dict:
    return {
        "container": lambda v: event.type == "container" and (
            v == event.attributes.get("name") or event.actor_id.startswith(v)),
        "event": lambda v: v == event.action,
        "type": lambda v: v == event.type,
        "image": lambda v: v in (event.attributes.get("image"), event.actor_id),
        "label": lambda v: label_matches(event.attributes, v),
    }


def _show(event: Event, template: str | None) -> None:
    if template is None:
        print(default_line(event), flush=True)
    elif template == "json":
        print_formatted("json", [event.docker_view()])
        sys.stdout.flush()
    else:
        print(render(template, event.docker_view()), flush=True)


def run(args, store: Store) -> int:
    filters = parse_filters(args.filter, FILTERS)
    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until) if args.until else None
    started = time.time()
    past, offset = events.read(store.root)

    def wanted(event: Event) -> bool:
        seconds = event.time_nano / 1e9
        return (since is None or seconds >= since) and (until is None or seconds <= until) \
            and matches(filters, _tests(event))

    if since is not None or until is not None:  # docker shows past events only when asked
        for event in past:
            if wanted(event):
                _show(event, args.format)
    if until is not None and until <= started:
        return 0
    while until is None or time.time() <= until:
        new, offset = events.read(store.root, offset)
        for event in new:
            if wanted(event):
                _show(event, args.format)
        if not new:
            time.sleep(0.1)
    return 0
