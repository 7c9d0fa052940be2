"""``pyunion network create/ls/rm/inspect``: bridge networks (container/network.py), printed
as podman prints them."""

from __future__ import annotations

import argparse
import json
import os
import sys

from unionfs.image.cli.common import parse_labels
from unionfs.image.cli.output import print_table
from unionfs.image.cli.template import print_formatted, render
from unionfs.image.container import network as networks
from unionfs.image.container import records
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

CREATE_HELP = "Create a bridge network (containers on it reach each other by name)"
LS_HELP = "List networks"
RM_HELP = "Remove networks"
INSPECT_HELP = "Display a network's configuration"
PRUNE_HELP = "Remove the networks no container uses (the default one stays)"
EPILOG = """examples:
  pyunion network create --subnet 10.91.0.0/24 backend
  pyunion run -d --network backend --name web -p 8080:80 app:2.0 httpd -f
  pyunion run --rm --network backend app:2.0 wget -qO- http://web/
  pyunion network ls; pyunion network inspect backend; pyunion network rm backend
"""


def register(commands) -> None:
    c = commands.add_parser("network-create", help=CREATE_HELP, description=CREATE_HELP,
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-d", "--driver", default="bridge", choices=("bridge",),
                   help="the driver (bridge, the only one)")
    c.add_argument("--subnet", help="IPv4 subnet, as 10.91.0.0/24 (default: a free /24 of "
                                    "10.90.0.0/16)")
    c.add_argument("--gateway", help="the bridge's address (default: the subnet's first)")
    c.add_argument("--internal", action="store_true", help="no route out of the network")
    c.add_argument("--disable-dns", action="store_true",
                   help="no aardvark-dns: containers do not find each other by name")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(run=run_create)
    ls = commands.add_parser("network-ls", help=LS_HELP, description=LS_HELP)
    ls.add_argument("-q", "--quiet", action="store_true", help="names only")
    ls.add_argument("--no-trunc", action="store_true", help="full ids")
    ls.add_argument("--format", default="table", help="json, table …, or a Go template "
                    "({{.Name}}, {{.ID}}, {{.Driver}})")
    ls.set_defaults(run=run_ls)
    rm = commands.add_parser("network-rm", help=RM_HELP, description=RM_HELP)
    rm.add_argument("-f", "--force", action="store_true",
                    help="remove the containers on it first")
    rm.add_argument("networks", nargs="+", metavar="NETWORK")
    rm.set_defaults(run=run_rm)
    pr = commands.add_parser("network-prune", help=PRUNE_HELP, description=PRUNE_HELP)
    pr.add_argument("-f", "--force", action="store_true", help="do not ask (pyunion never "
                    "asks: accepted for docker's command line)")
    pr.set_defaults(run=run_prune)
    i = commands.add_parser("network-inspect", help=INSPECT_HELP, description=INSPECT_HELP)
    i.add_argument("-f", "--format", help="a Go template, or json")
    i.add_argument("networks", nargs="+", metavar="NETWORK")
    i.set_defaults(run=run_inspect)


def run_create(args, store: Store) -> int:
    network = networks.create(store, args.name, args.subnet, args.gateway,
                              internal=args.internal, dns=not args.disable_dns,
                              labels=parse_labels(args.label))
    print(network.name)
    return 0


def inspected(network: networks.Network) -> dict:
    """podman's ``network inspect`` object (labels only when there are some)."""
    data = {"name": network.name, "id": network.id, "driver": network.driver,
            "network_interface": network.network_interface, "created": network.created,
            "subnets": network.subnets, "ipv6_enabled": network.ipv6_enabled,
            "internal": network.internal, "dns_enabled": network.dns_enabled,
            "ipam_options": network.ipam_options}
    if network.labels:
        data["labels"] = network.labels
    return data


def run_ls(args, store: Store) -> int:
    found = networks.all_networks(store)
    if args.quiet:
        for network in found:
            print(network.name)
        return 0
    rows = [{"ID": n.id if args.no_trunc else n.id[:12], "Name": n.name, "Driver": n.driver,
             "Labels": n.labels, "Internal": n.internal, "DNSEnabled": n.dns_enabled,
             "Subnets": n.subnets} for n in found]
    if args.format != "table":
        print_formatted(args.format, rows, {"ID": "NETWORK ID", "Name": "NAME",
                                            "Driver": "DRIVER"})
        return 0
    print_table(["NETWORK ID", "NAME", "DRIVER"], [[r["ID"], r["Name"], r["Driver"]]
                                                   for r in rows])
    return 0


def users(store: Store, network: networks.Network) -> list[records.Container]:
    return [c for c in records.all_containers(store) if c.spec.network == network.name]


def run_rm(args, store: Store) -> int:
    status = 0
    for text in args.networks:
        try:
            network = networks.get(store, text)
            on_it = users(store, network)
            if args.force and network.name != networks.DEFAULT_NETWORK:
                for container in on_it:
                    Session(store, container).remove(force=True)
                on_it = []
            networks.remove(store, network, [f"container {c.name} ({c.short_id})"
                                             for c in on_it])
            print(network.name)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    return status


def prune_networks(store: Store) -> list[str]:
    """Removes every network no container uses (not the default one); their names."""
    if not os.path.isdir(networks.networks_dir(store)):
        return []   # none made yet (and the default is not made just to be kept)
    removed = []
    for network in networks.all_networks(store):
        if network.name != networks.DEFAULT_NETWORK and not users(store, network):
            networks.remove(store, network, [])
            removed.append(network.name)
    return removed


def run_prune(args, store: Store) -> int:
    for name in prune_networks(store):
        print(name)
    return 0


def run_inspect(args, store: Store) -> int:
    found, status = [], 0
    for text in args.networks:
        try:
            found.append(inspected(networks.get(store, text)))
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 125 if status == 0 else status
    if args.format and args.format != "json":
        for item in found:
            print(render(args.format, item))
    else:
        print(json.dumps(found, indent=4))
    return 1 if status else 0
