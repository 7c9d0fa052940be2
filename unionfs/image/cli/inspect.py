"""``pyunion inspect``: an image's or a container's details as JSON (docker's shape, plus an
image's layer dirs), or through a Go template (``-f``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from unionfs.image.cli.common import image_names, resolve, short_name
from unionfs.image.errors import ImageError, NotFound
from unionfs.image.mounts import layer_dirs
from unionfs.image.store import Store

HELP = "Display detailed information on images or containers"
EPILOG = """examples:
  pyunion inspect app:2.0
  pyunion inspect -f '{{.State.Status}} {{.State.ExitCode}}' web
  pyunion inspect -f '{{range .Config.Env}}{{println .}}{{end}}' app:2.0
A name is looked for among containers first, then images (--type to choose)."""


def register(commands) -> None:
    p = commands.add_parser("inspect", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--format", help="a Go template, or json")
    p.add_argument("--type", dest="kind", choices=("container", "image"),
                   help="only look for this kind of object")
    p.add_argument("-s", "--size", action="store_true", help="(accepted; sizes are shown)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=run, kind=None)


def describe(store: Store, image_id: str) -> dict:
    row = store.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    digests = [r["name"] for r in store.db.execute(
        "SELECT name FROM repo_digests WHERE image_id = ?", (image_id,))]
    dirs = layer_dirs(store, image_id)
    return {
        "Id": image_id,
        "RepoTags": [short_name(n) for n in image_names(store, image_id)],
        "RepoDigests": digests,
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant", ""),
        "Os": config.get("os", ""),
        "Config": config.get("config", {}),
        "RootFS": {"Type": "layers", "Layers": config.get("rootfs", {}).get("diff_ids", [])},
        "Size": row["size"],
        "ManifestDigest": row["manifest_digest"],
        "LayerDirs": dirs,
        "GraphDriver": {"Name": "pyunion", "Data": {"LowerDir": ":".join(reversed(dirs))}},
    }


def find(store: Store, text: str, kind: str | None) -> dict:
    """The container or image named ``text`` (a container first, as docker looks)."""
    from unionfs.image.container import records

    if kind in (None, "container"):
        try:
            return describe_container(store, records.get(store, text))
        except NotFound:
            if kind == "container":
                raise NotFound(f"No such container: {text}") from None
    try:
        return describe(store, resolve(store, text).image_id)
    except NotFound:
        raise NotFound(f"No such {'image' if kind == 'image' else 'object'}: {text}") from None


def run(args, store: Store) -> int:
    found, status = [], 0
    for text in args.names:
        try:
            found.append(find(store, text, args.kind))
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
            status = 1
    if args.format and args.format != "json":
        from unionfs.image.cli.template import render

        for item in found:
            print(render(args.format, item))
    else:
        print(json.dumps(found, indent=4))
    return status


ZERO_TIME = "0001-01-01T00:00:00Z"


def _time(when: float | None) -> str:
    from unionfs.image.container.logs import timestamp

    return timestamp(when) if when else ZERO_TIME


def describe_container(store: Store, container) -> dict:
    """docker's fields that apply to a pyunion container."""
    from unionfs.image.container import restart, rootfs, runtime, session
    from unionfs.image.container.bundle import image_config, process_args

    container = session.refresh(store, container)
    spec = container.spec
    config = image_config(store, container.image_id)
    try:
        args = process_args(config, spec)
    except ImageError:
        args = []
    running = container.state == "running"
    paused = runtime.is_paused(store, container)
    directory = records_dir(store, container.id)
    env = list(config.get("Env") or []) + list(spec.env)
    return {
        "Id": container.id,
        "Created": _time(container.created),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": "paused" if paused else container.state,
            "Running": running, "Paused": paused, "Restarting": False, "OOMKilled": False,
            "Dead": False, "Pid": _process_pid(store, container) if running else 0,
            "ExitCode": container.exit_code or 0, "Error": "",
            "StartedAt": _time(container.started), "FinishedAt": _time(container.finished),
        },
        "Image": container.image_id,
        "ResolvConfPath": os.path.join(directory, "resolv.conf"),
        "HostnamePath": os.path.join(directory, "hostname"),
        "HostsPath": os.path.join(directory, "hosts"),
        "LogPath": os.path.join(directory, "output.log"),
        "Name": "/" + container.name,
        "RestartCount": restart.restart_count(store, container),
        "Driver": "pyunion",
        "Platform": "linux",
        "HostConfig": {
            "Binds": list(spec.volumes), "NetworkMode": network_mode(spec.network),
            "AutoRemove": spec.auto_remove, "ReadonlyRootfs": spec.read_only,
            "Runtime": spec.runtime, "Privileged": spec.privileged,
            "RestartPolicy": {"Name": spec.restart.partition(":")[0],
                              "MaximumRetryCount": int(spec.restart.partition(":")[2] or 0)},
            "CapAdd": spec.cap_add, "CapDrop": spec.cap_drop, "ExtraHosts": spec.extra_hosts,
            "Init": spec.init, "Memory": spec.memory or 0,
            "NanoCpus": int((spec.cpus or 0) * 1e9),
            "PortBindings": _port_bindings(spec.publish),
        },
        "GraphDriver": {"Name": "pyunion", "Data": {
            "LowerDir": ":".join(rootfs.lowers(store, container)),
            "UpperDir": rootfs.upper_dir(store, container),
            "WorkDir": os.path.join(directory, "work"),
            "MergedDir": container.mountpoint or os.path.join(directory, "merged")}},
        "Mounts": [_mount(v) for v in spec.volumes],
        "NetworkSettings": network_settings(store, container),
        "Config": {
            "Hostname": spec.hostname or container.id[:12], "User": spec.user or
            config.get("User", ""), "Tty": spec.tty, "OpenStdin": spec.interactive,
            "Env": env, "Cmd": spec.command or config.get("Cmd"),
            "Image": container.image_name, "WorkingDir": spec.workdir or
            config.get("WorkingDir", ""),
            "Entrypoint": spec.entrypoint if spec.entrypoint is not None else
            config.get("Entrypoint"),
            "Labels": {**(config.get("Labels") or {}), **spec.labels},
        },
    }


def network_mode(network: str) -> str:
    """podman's HostConfig.NetworkMode: ``bridge`` for any bridge network (the network's
    name is in NetworkSettings.Networks), else host, none or slirp4netns."""
    from unionfs.image.container.network import MODES, SLIRP

    return network if network in (*MODES, SLIRP) else "bridge"


def _port_bindings(publish: list[str]) -> dict:
    """docker's ``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`` (HostPort "" for a free
    port chosen at start)."""
    from unionfs.image.container.network import parse_all

    bindings: dict[str, list] = {}
    for p in parse_all(publish):
        bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port or "")})
    return bindings


def network_settings(store: Store, container) -> dict:
    """docker's NetworkSettings: the address, gateway, MAC and ports of a running container
    on a bridge (empty otherwise), and the namespace as SandboxKey."""
    from unionfs.image.container import network

    attached = network.attachment(store, container.id) \
        if container.state == "running" else None
    settings: dict = {"SandboxKey": "", "Ports": {}, "IPAddress": "", "IPPrefixLen": 0,
                      "Gateway": "", "MacAddress": "", "Networks": {}}
    if attached is None and container.state == "running" and \
            container.spec.network == network.SLIRP:
        from unionfs.image.container import slirp

        settings.update(IPAddress=slirp.ADDRESS, IPPrefixLen=24, Gateway=slirp.GATEWAY,
                        Ports=_ports(network.published_ports(store, container.id,
                                                             network.SLIRP)))
    if attached is None:
        return settings
    net = network.get(store, attached.network)
    entry = {"NetworkID": net.id, "IPAddress": attached.address,
             "IPPrefixLen": net.subnet.prefixlen, "Gateway": net.gateway,
             "MacAddress": attached.mac_address,
             "Aliases": [container.name] if net.dns_enabled else []}
    settings.update(SandboxKey=attached.netns, Ports=_ports(attached.port_list),
                    IPAddress=attached.address,
                    IPPrefixLen=net.subnet.prefixlen, Gateway=net.gateway,
                    MacAddress=attached.mac_address, Networks={net.name: entry})
    return settings


def _ports(published: list) -> dict:
    ports: dict[str, list] = {}
    for p in published:
        ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
    return ports


def _process_pid(store: Store, container) -> int:
    """The pid of the container's process (pid 1 of its namespace) on the host."""
    from unionfs.image.container.runtime import runtime_state

    state = runtime_state(store, container) or {}
    return int(state.get("pid") or 0)


def records_dir(store: Store, container_id: str) -> str:
    from unionfs.image.container.records import container_dir

    return container_dir(store, container_id)


def _mount(volume: str) -> dict:
    parts = volume.split(":")
    mode = parts[2] if len(parts) > 2 else ""
    return {"Type": "bind", "Source": parts[0], "Destination": parts[1] if len(parts) > 1
            else "", "Mode": mode, "RW": mode != "ro", "Propagation": "rprivate"}
