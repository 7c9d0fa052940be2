"""``pyunion top`` (a container's processes, as the host's ``ps`` shows them) and ``pyunion
port`` (its published ports: a bridge network's ``-p``)."""

from __future__ import annotations

import argparse
import json
import subprocess

from unionfs.image.container import network, records, runtime, session
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store

TOP_HELP = "Display the running processes of a container"
PORT_HELP = "List a container's port mappings"


def register(commands) -> None:
    t = commands.add_parser("top", help=TOP_HELP, description=TOP_HELP,
                            epilog="examples:\n  pyunion top web\n  pyunion top web -o pid,comm")
    t.add_argument("container", metavar="CONTAINER")
    t.add_argument("ps_options", nargs=argparse.REMAINDER, metavar="PS_OPTION",
                   help="options of ps(1) (default -ef); rows are those of its processes")
    t.set_defaults(run=run_top)
    p = commands.add_parser("port", help=PORT_HELP, description=PORT_HELP,
                            epilog="example:\n  pyunion port web")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    p.set_defaults(run=run_port)


def container_pids(store: Store, container: records.Container) -> set[int]:
    result = subprocess.run(runtime.runtime_command(store, container)
                            + ["ps", "--format", "json", container.id],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ImageError(f"cannot list the processes of {container.name}: "
                         f"{result.stderr.strip().splitlines()[-1:] or 'the runtime refused'}")
    return set(json.loads(result.stdout or "[]") or [])


def run_top(args, store: Store) -> int:
    container = session.refresh(store, records.get(store, args.container))
    if container.state != "running":
        raise Conflict(f"container {container.name} is not running")
    pids = container_pids(store, container)
    options = args.ps_options or ["-ef"]
    result = subprocess.run(["ps", *options], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ImageError(f"ps {' '.join(options)} failed: {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise ImageError(f"ps {' '.join(options)} prints no PID column: add one (-o pid,…)")
    column = header.index("PID")
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            print(line)
    return 0


def run_port(args, store: Store) -> int:
    """docker's lines: ``80/tcp -> 0.0.0.0:8080``, or ``0.0.0.0:8080`` for one port asked;
    only a running container on a bridge network has any."""
    container = session.refresh(store, records.get(store, args.container))
    ports = network.published_ports(store, container.id, container.spec.network) \
        if container.state == "running" else []
    if args.port:
        number, _, protocol = args.port.partition("/")
        ports = [p for p in ports if str(p.container_port) == number
                 and p.protocol == (protocol or "tcp")]
        if not ports:
            raise ImageError(f"no public port '{args.port}' published for {container.name}")
        for p in ports:
            print(f"{p.host_ip or '0.0.0.0'}:{p.host_port}")
        return 0
    for p in ports:
        print(f"{p.container_port}/{p.protocol} -> {p.host_ip or '0.0.0.0'}:{p.host_port}")
    return 0
