"""``pyunion stats``: CPU, memory, block I/O and process counts of running containers, read
from each container's cgroup (v1 or v2), as docker's ``stats`` shows them.

CPU % is docker's: the container's CPU time over the machine's in the same interval (one
second), times the number of CPUs. A container without a cgroup of its own (rootless on a
cgroup v1 host: runc cannot make one) shows ``--``. NET I/O is ``0B / 0B``: containers use
the host's network, whose counters are not the container's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from unionfs.image.cli.output import human_size, print_table
from unionfs.image.cli.template import print_formatted
from unionfs.image.container import records, runtime, session
from unionfs.image.container.bundle import caller_limits
from unionfs.image.container.records import Container
from unionfs.image.store import Store

HELP = "Show running containers' resource usage (CPU, memory, block I/O, processes)"
EPILOG = """examples:
  pyunion stats --no-stream                  one sample of every running container
  pyunion stats web                          refreshed every second (Ctrl-C ends)
  pyunion stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}'
"""
INTERVAL = 1.0
HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
           "BLOCK I/O", "PIDS"]


def register(commands) -> None:
    p = commands.add_parser("stats", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("containers", nargs="*", metavar="CONTAINER",
                   help="the containers (default: every running one)")
    p.add_argument("-a", "--all", action="store_true", help="stopped containers too")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    p.add_argument("--no-trunc", action="store_true", help="full container ids")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="json, table …, or a Go template (.ID .Name .CPUPerc .MemUsage "
                        ".MemPerc .NetIO .BlockIO .PIDs)")
    p.set_defaults(run=run)


def binary_size(size: float) -> str:
    """docker's BytesSize: binary units, four significant digits (``1.234MiB``)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    return f"{size:.4g}{units[unit]}"


# ---------------------------------------------------------------------------- cgroups


def cgroup_dirs(pid: int) -> dict[str, str] | None:
    """The cgroup directory of each controller of a process (v2: key ""), or None when it
    shares ours (no cgroup of its own)."""
    def read(which: str) -> dict[str, str]:
        found = {}
        with open(f"/proc/{which}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    found[name] = path
        return found

    try:
        theirs, ours = read(str(pid)), read("self")
    except (OSError, ValueError):
        return None
    key = "memory" if "memory" in theirs else ""
    if theirs.get(key) == ours.get(key):
        return None
    dirs = {}
    for name, path in theirs.items():
        candidates = [f"/sys/fs/cgroup{path}"] if name == "" else [
            f"/sys/fs/cgroup/{d}{path}" for d in (name, "cpu,cpuacct", "cpuacct,cpu")]
        dirs[name] = next((d for d in candidates if os.path.isdir(d)), "")
    return dirs


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


@dataclass
class Sample:
    cpu_ns: int        # the container's CPU time
    system_ns: int     # the machine's
    memory: int
    limit: int
    read_bytes: int
    write_bytes: int
    pids: int


def _system_ns() -> int:
    fields = _read("/proc/stat").splitlines()[0].split()[1:8]
    return sum(int(f) for f in fields) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def sample(dirs: dict[str, str]) -> Sample:
    host_memory = caller_limits()[0]
    if "" in dirs and "memory" not in dirs:  # cgroup v2
        d = dirs[""]
        cpu = _keyed(_read(f"{d}/cpu.stat")).get("usage_usec", 0) * 1000
        stat = _keyed(_read(f"{d}/memory.stat"))
        usage = int(_read(f"{d}/memory.current") or 0) - stat.get("inactive_file", 0)
        limit_text = _read(f"{d}/memory.max").strip()
        limit = int(limit_text) if limit_text.isdigit() else host_memory
        read = write = 0
        for line in _read(f"{d}/io.stat").splitlines():
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            read += int(fields.get("rbytes", 0))
            write += int(fields.get("wbytes", 0))
        pids = int(_read(f"{d}/pids.current") or 0)
    else:
        cpu = int(_read(f"{dirs.get('cpuacct', '')}/cpuacct.usage") or 0)
        memory = dirs.get("memory", "")
        stat = _keyed(_read(f"{memory}/memory.stat"))
        usage = int(_read(f"{memory}/memory.usage_in_bytes") or 0) - stat.get(
            "total_inactive_file", 0)
        limit = min(int(_read(f"{memory}/memory.limit_in_bytes") or host_memory), host_memory)
        read = write = 0
        for line in _read(f"{dirs.get('blkio', '')}/blkio.throttle.io_service_bytes") \
                .splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] in ("Read", "Write"):
                if fields[1] == "Read":
                    read += int(fields[2])
                else:
                    write += int(fields[2])
        pids = int(_read(f"{dirs.get('pids', '')}/pids.current") or 0)
    return Sample(cpu, _system_ns(), max(usage, 0), limit, read, write, pids)


# ---------------------------------------------------------------------------- the rows


def _pid(store: Store, container: Container) -> int | None:
    text = _read(os.path.join(records.container_dir(store, container.id), runtime.PID_FILE))
    return int(text) if text.strip().isdigit() else None


def _row(container: Container, before: Sample | None, after: Sample | None,
         no_trunc: bool) -> dict[str, str]:
    row = {"Container": container.name, "ID": container.id if no_trunc else container.short_id,
           "Name": container.name, "CPUPerc": "--", "MemUsage": "-- / --", "MemPerc": "--",
           "NetIO": "--", "BlockIO": "--", "PIDs": "--"}
    if after is None:
        if container.state != "running":
            row.update(CPUPerc="0.00%", MemUsage="0B / 0B", MemPerc="0.00%", NetIO="0B / 0B",
                       BlockIO="0B / 0B", PIDs="0")
        return row
    cpu = 0.0
    if before is not None and after.system_ns > before.system_ns:
        cpu = ((after.cpu_ns - before.cpu_ns) / (after.system_ns - before.system_ns)
               * (os.cpu_count() or 1) * 100)
    row.update(CPUPerc=f"{max(cpu, 0):.2f}%",
               MemUsage=f"{binary_size(after.memory)} / {binary_size(after.limit)}",
               MemPerc=f"{100 * after.memory / after.limit if after.limit else 0:.2f}%",
               NetIO="0B / 0B",
               BlockIO=f"{human_size(after.read_bytes)} / {human_size(after.write_bytes)}",
               PIDs=str(after.pids))
    return row


def _chosen(args, store: Store) -> list[Container]:
    if args.containers:
        return [session.refresh(store, records.get(store, t)) for t in args.containers]
    return [c for c in (session.refresh(store, c) for c in records.all_containers(store))
            if args.all or c.state == "running"]


def _samples(store: Store, containers: list[Container]) -> list[Sample | None]:
    found: list[Sample | None] = []
    for container in containers:
        pid = _pid(store, container) if container.state == "running" else None
        dirs = cgroup_dirs(pid) if pid else None
        found.append(sample(dirs) if dirs else None)
    return found


def _print(args, rows: list[dict[str, str]]) -> None:
    if args.format:
        print_formatted(args.format, rows, {"CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT",
                                            "MemPerc": "MEM %", "NetIO": "NET I/O",
                                            "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
                                            "ID": "CONTAINER ID"})
    else:
        print_table(HEADERS, [[r["ID"], r["Name"], r["CPUPerc"], r["MemUsage"], r["MemPerc"],
                               r["NetIO"], r["BlockIO"], r["PIDs"]] for r in rows])


def run(args, store: Store) -> int:
    containers = _chosen(args, store)
    before = _samples(store, containers)
    while True:
        if any(c.state == "running" for c in containers) or not args.no_stream:
            time.sleep(INTERVAL)
        after = _samples(store, containers)
        rows = [_row(c, b, a, args.no_trunc) for c, b, a in zip(containers, before, after,
                                                                  strict=True)]
        if not args.no_stream:
            sys.stdout.write("\033[2J\033[H")  # docker's refresh: clear, then the table
        _print(args, rows)
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = after
        if not args.containers:
            containers = _chosen(args, store)
            before = _samples(store, containers)
