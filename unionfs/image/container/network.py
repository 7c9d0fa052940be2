"""Bridge networks, as podman makes them: netavark sets up a container's network namespace
(a veth into the network's bridge, an address, NAT and ``-p`` port forwarding in iptables) and
aardvark-dns answers for container names on networks with DNS.

pyunion does what podman does around netavark: it keeps the network definitions (JSON files
under ``<store>/networks/``, in netavark's own form, which is also podman's ``network inspect``),
gives each container an address of the subnet, creates the namespace (``ip netns add``), hands
netavark the JSON it reads on stdin, and tears it all down when the container's process ends.

A container's network while it runs is a file, ``containers/<id>/network.json`` (written
before anything is set up, so a crash half way is still torn down). It carries the boot id:
after a reboot the namespace, the bridge, the rules and aardvark-dns are gone with the kernel,
so the state of an earlier boot is dropped, and the aardvark-dns directory with it
(``forget_previous_boot``) at the next command that sets up or tears down a network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from unionfs.image.daemons import process_alive
from unionfs.image.errors import Conflict, ImageError, NotFound
from unionfs.image.store import Store
from unionfs.image.store.locks import locked

NETAVARK_PATHS = ("/usr/lib/podman/netavark", "/usr/libexec/podman/netavark")
AARDVARK_PATHS = ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns")
DEFAULT_NETWORK = "pyunion"
# docker's name of its default network; podman takes it for its own default too
DEFAULT_ALIASES = ("bridge", DEFAULT_NETWORK)
MODES = ("host", "none")     # besides network names
SLIRP = "slirp4netns"        # a network of the container's own, for ordinary users too
SUBNET_POOL = ipaddress.ip_network("10.90.0.0/16")   # /24 subnets, the default's first
STATE_FILE = "network.json"
HOST_LOCK = "/run/pyunion/netavark.lock"   # every store's netavark runs (root only)
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


@dataclass
class Network:
    """A network definition: netavark's ``network_info`` (podman's ``network inspect``)."""

    name: str
    id: str
    driver: str
    network_interface: str
    created: str
    subnets: list[dict[str, str]]
    ipv6_enabled: bool = False
    internal: bool = False
    dns_enabled: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    ipam_options: dict[str, str] = field(default_factory=lambda: {"driver": "host-local"})

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnets[0]["subnet"])

    @property
    def gateway(self) -> str:
        return self.subnets[0]["gateway"]


@dataclass
class Port:
    """One ``-p [IP:][HOST:]CTR[/PROTO]`` (host_port 0: a free port, chosen at each start)."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def netavark(self) -> dict[str, Any]:
        return {**asdict(self), "range": 1}

    def shown(self) -> str:
        """As docker's ``ps`` PORTS column: ``0.0.0.0:8080->80/tcp``."""
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/" \
               f"{self.protocol}"


# ----------------------------------------------------------------------------- definitions


def networks_dir(store: Store) -> str:
    return os.path.join(store.root, "networks")


def run_dir(store: Store) -> str:
    """netavark's ``--config``: aardvark-dns's files and lock (this boot's only)."""
    return os.path.join(networks_dir(store), "run")


def _lock(store: Store):
    os.makedirs(networks_dir(store), mode=0o700, exist_ok=True)
    return locked(os.path.join(networks_dir(store), "lock"))


def _path(store: Store, name: str) -> str:
    return os.path.join(networks_dir(store), name + ".json")


def all_networks(store: Store) -> list[Network]:
    """Every network, the default one made first if it is not there yet."""
    ensure_default(store)
    found = []
    for entry in sorted(os.listdir(networks_dir(store))):
        if entry.endswith(".json"):
            with open(os.path.join(networks_dir(store), entry)) as f:
                found.append(Network(**json.load(f)))
    return found


def get(store: Store, text: str) -> Network:
    """A network by name, ``bridge`` (the default), id or unique id prefix."""
    if text in DEFAULT_ALIASES:
        return ensure_default(store)
    networks = all_networks(store)
    exact = [n for n in networks if text in (n.name, n.id)]
    matches = exact or [n for n in networks if re.fullmatch(r"[0-9a-f]+", text)
                        and n.id.startswith(text)]
    if len(matches) > 1:
        raise Conflict(f"{text} is an ambiguous network id prefix")
    if not matches:
        raise NotFound(f"network {text} not found")
    return matches[0]


def ensure_default(store: Store) -> Network:
    """The default network (``pyunion``, the first subnet of the pool), made on first use."""
    path = _path(store, DEFAULT_NETWORK)
    if not os.path.exists(path):
        with _lock(store):
            if not os.path.exists(path):
                _write(store, _new(DEFAULT_NETWORK, next(SUBNET_POOL.subnets(new_prefix=24)),
                                   None, "pyunion0", internal=False, dns=False, labels={}))
    with open(path) as f:
        return Network(**json.load(f))


def _new(name: str, subnet: ipaddress.IPv4Network, gateway: str | None, interface: str, *,
         internal: bool, dns: bool, labels: dict[str, str]) -> Network:
    gateway = gateway or str(next(subnet.hosts()))
    return Network(name=name, id=secrets.token_hex(32), driver="bridge",
                   network_interface=interface,
                   created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   subnets=[{"subnet": str(subnet), "gateway": gateway}],
                   internal=internal, dns_enabled=dns, labels=labels)


def _write(store: Store, network: Network) -> None:
    temp = _path(store, network.name) + ".tmp"
    with open(temp, "w") as f:
        json.dump(asdict(network), f, indent=1)
    os.rename(temp, _path(store, network.name))


def create(store: Store, name: str, subnet: str | None = None, gateway: str | None = None, *,
           internal: bool = False, dns: bool = True,
           labels: dict[str, str] | None = None) -> Network:
    """A new bridge network: the subnet given, or the next /24 of 10.90.0.0/16 that neither
    another network nor a route of the host's uses; DNS (aardvark-dns) on, as podman's."""
    if not _NAME_RE.fullmatch(name):
        raise ImageError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are "
                         "allowed")
    if name in DEFAULT_ALIASES or name in MODES:
        raise Conflict(f"network name {name} is reserved")
    networks = all_networks(store)
    with _lock(store):
        if os.path.exists(_path(store, name)):
            raise Conflict(f"network name {name} already used")
        taken = [n.subnet for n in networks] + _host_routes()
        chosen = _subnet(subnet, gateway, taken)
        interfaces = {n.network_interface for n in networks}
        interface = next(f"pyunion{i}" for i in range(1, 1000)
                         if f"pyunion{i}" not in interfaces)
        network = _new(name, chosen, gateway, interface, internal=internal, dns=dns,
                       labels=labels or {})
        _write(store, network)
    return network


def _subnet(text: str | None, gateway: str | None,
            taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    if text is None:
        if gateway is not None:
            raise ImageError("--gateway needs --subnet")
        for candidate in SUBNET_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise ImageError(f"no free subnet left in {SUBNET_POOL}")
    try:
        subnet = ipaddress.ip_network(text)
    except ValueError:
        raise ImageError(f"invalid subnet {text!r} (as 10.91.0.0/24)") from None
    if subnet.version != 4 or subnet.prefixlen > 30:
        raise ImageError(f"subnet {text} must be IPv4 with room for addresses (/30 or wider)")
    if any(subnet.overlaps(t) for t in taken):
        raise Conflict(f"subnet {subnet} is already used on the host or by another network")
    if gateway is not None:
        try:
            if ipaddress.ip_address(gateway) not in subnet:
                raise ValueError
        except ValueError:
            raise ImageError(f"gateway {gateway} is not an address of {subnet}") from None
    return subnet


def _host_routes() -> list[ipaddress.IPv4Network]:
    """The subnets routed on this host (a new network must not hide them)."""
    try:
        result = subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True,
                                timeout=30)
        routes = json.loads(result.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    found = []
    for route in routes:
        with contextlib.suppress(ValueError):
            if route.get("dst") not in (None, "default"):
                found.append(ipaddress.ip_network(route["dst"], strict=False))
    return found


def remove(store: Store, network: Network, users: list[str]) -> None:
    if network.name == DEFAULT_NETWORK:
        raise Conflict(f"default network {DEFAULT_NETWORK} cannot be removed")
    if users:
        raise Conflict(f"network {network.name} is being used by " + ", ".join(users))
    with _lock(store):
        os.unlink(_path(store, network.name))


def default_mode() -> str:
    """``--network``'s default: ``$PYUNION_NETWORK``, else podman 4.3's: the default bridge
    for root (docker's default too), slirp4netns for an ordinary user (rootless podman's)."""
    return os.environ.get("PYUNION_NETWORK") or ("bridge" if os.geteuid() == 0 else SLIRP)


def check_bridge_tools() -> None:
    """A bridge's tools are there (podman, too, fails without them rather than fall back to
    the host's network): one line naming the package that is missing."""
    for name, paths, package in (("netavark", NETAVARK_PATHS, "netavark"),
                                 ("aardvark-dns", AARDVARK_PATHS, "aardvark-dns")):
        if not any(os.access(p, os.X_OK) for p in paths):
            raise ImageError(f"bridge networks need {name} (apt-get install {package}); "
                             "--network host needs nothing")
    for name, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(name) is None:
            raise ImageError(f"bridge networks need {name} (apt-get install {package}); "
                             "--network host needs nothing")


def check_mode(store: Store, text: str) -> str:
    """``--network``'s value as kept in the container's spec: host, none, or the name of an
    existing network (``bridge``: the default, made if need be)."""
    if text in MODES:
        return text
    if text == SLIRP:
        from unionfs.image.container import slirp

        slirp.check()
        return text
    if os.geteuid() != 0:
        raise ImageError(f"bridge networks need root (netavark): an ordinary user's "
                         f"containers use --network {SLIRP} (-p works there), host or none")
    check_bridge_tools()
    return get(store, text).name


def parse_ports(text: str) -> list[Port]:
    """docker's ``-p [IP:][HOST:]CTR[/tcp|udp]``, where HOST and CTR may be ranges of the same
    length (``8080-8081:80-81``: one port each); HOST empty or left out: a free port each."""
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    host_ip = ""
    if spec.startswith("["):
        host_ip, _, spec = spec[1:].partition("]")
        spec = spec.removeprefix(":")
    parts = spec.split(":")
    if not host_ip and len(parts) == 3:
        host_ip = parts.pop(0)
    if protocol not in ("tcp", "udp") or len(parts) > 2:
        raise ImageError(f"invalid publish {text!r} ([IP:][HOST:]CONTAINER[/tcp|udp])")
    host, container = parts if len(parts) == 2 else ("", parts[0])
    try:
        if host_ip:
            ipaddress.ip_address(host_ip)
        container_ports = _port_range(container, text, first=1)
        host_ports = _port_range(host, text, first=0) if host else [0] * len(container_ports)
    except ValueError:
        raise ImageError(f"invalid publish {text!r} ([IP:][HOST:]CONTAINER[/tcp|udp], "
                         "ports 1-65535 or ranges as 8080-8081)") from None
    if len(host_ports) != len(container_ports):
        raise ImageError(f"invalid publish {text!r}: host and container port ranges have "
                         f"different lengths: {len(host_ports)} vs {len(container_ports)}")
    return [Port(host_ip, h, c, protocol) for h, c in zip(host_ports, container_ports,
                                                         strict=True)]


def _port_range(text: str, whole: str, first: int) -> list[int]:
    """``80`` or ``80-81`` (its end above its start), each port in first..65535."""
    start, dash, end = text.partition("-")
    low = int(start)
    high = int(end) if dash else low
    if dash and high <= low:
        raise ImageError(f"invalid publish {whole!r}: the end port of a range must be higher "
                         f"than the start port ({high} is not higher than {low})")
    if not (first <= low and high < 65536):
        raise ValueError(text)
    return list(range(low, high + 1))


def parse_all(publish: list[str]) -> list[Port]:
    """Every ``-p``'s ports, in order."""
    return [port for text in publish for port in parse_ports(text)]


def shown_ports(ports: list[Port]) -> str:
    """docker's ``ps`` PORTS: ``0.0.0.0:8080->80/tcp``, consecutive ports as one range
    (``0.0.0.0:8080-8081->80-81/tcp``), comma separated."""
    groups: list[list[Port]] = []
    for port in ports:
        last = groups[-1][-1] if groups else None
        if last is not None and (last.host_ip, last.protocol) == (port.host_ip, port.protocol) \
                and port.host_port == last.host_port + 1 \
                and port.container_port == last.container_port + 1:
            groups[-1].append(port)
        else:
            groups.append([port])
    shown = []
    for group in groups:
        first, last = group[0], group[-1]
        if len(group) == 1:
            shown.append(first.shown())
        else:
            shown.append(f"{first.host_ip or '0.0.0.0'}:{first.host_port}-{last.host_port}->"
                         f"{first.container_port}-{last.container_port}/{first.protocol}")
    return ", ".join(shown)


# ----------------------------------------------------------------------------- containers


@dataclass
class Attachment:
    """A running container's place on its network (``containers/<id>/network.json``)."""

    network: str
    netns: str
    address: str
    boot_id: str
    ports: list[dict[str, Any]]
    mac_address: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # what netavark was given
    owner_pid: int = 0   # the pyunion process that set it up, and tears it down at the end

    @property
    def container_name(self) -> str:
        return self.options.get("container_name", "")

    @property
    def port_list(self) -> list[Port]:
        return [Port(**p) for p in self.ports]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _state_path(store: Store, container_id: str) -> str:
    return os.path.join(store.root, "containers", container_id, STATE_FILE)


def attachment(store: Store, container_id: str) -> Attachment | None:
    """The container's network while it runs (None when it has none, or had it in an earlier
    boot)."""
    try:
        with open(_state_path(store, container_id)) as f:
            found = Attachment(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    return found if found.boot_id == _boot_id() else None


def orphaned(store: Store, container_id: str) -> bool:
    """The container's network is there but the process that set it up is gone, its container
    not running: a ``pyunion run`` killed while it set up the network."""
    found = attachment(store, container_id)
    return found is not None and found.owner_pid != 0 and \
        not process_alive(found.owner_pid, b"unionfs", b"pyunion")


def _write_attachment(store: Store, container_id: str, found: Attachment) -> None:
    path = _state_path(store, container_id)
    with open(path + ".tmp", "w") as f:
        json.dump(asdict(found), f)
    os.rename(path + ".tmp", path)


def _binary(paths: tuple[str, ...], package: str) -> str:
    for path in paths:
        if os.access(path, os.X_OK):
            return path
    raise ImageError(f"bridge networks need {os.path.basename(paths[0])} "
                     f"(apt-get install {package})")


def _netavark(store: Store, verb: str, netns: str, options: dict[str, Any]) -> str:
    """One netavark run, one at a time on the host (podman, too, holds one lock for the
    host's): two stores' containers share the default bridge and the iptables chains, and
    concurrent runs race to make and remove them ("Chain already exists")."""
    command = [_binary(NETAVARK_PATHS, "netavark"), "--config", run_dir(store),
               "--aardvark-binary", _binary(AARDVARK_PATHS, "aardvark-dns"), verb, netns]
    os.makedirs(os.path.dirname(HOST_LOCK), mode=0o755, exist_ok=True)
    with locked(HOST_LOCK):
        result = subprocess.run(command, input=json.dumps(options), capture_output=True,
                                text=True, timeout=60)
    if result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip()
        message = output.splitlines()[-1] if output else ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(message)["error"]
        raise ImageError(f"netavark {verb} failed: {message or result.returncode}")
    return result.stdout


def forget_previous_boot(store: Store) -> None:
    """aardvark-dns's files of an earlier boot (its process and the bridges went with it)."""
    marker = os.path.join(networks_dir(store), "boot_id")
    current = _boot_id()
    try:
        with open(marker) as f:
            if f.read().strip() == current:
                return
    except OSError:
        pass
    shutil.rmtree(run_dir(store), ignore_errors=True)
    os.makedirs(run_dir(store), mode=0o700, exist_ok=True)
    with open(marker, "w") as f:
        f.write(current)


def _free_port(protocol: str, host_ip: str) -> int:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip or "0.0.0.0", 0))
        return s.getsockname()[1]


def _attachments(store: Store) -> list[Attachment]:
    """Every container's network of this boot."""
    containers = os.path.join(store.root, "containers")
    found = [attachment(store, entry) for entry in
             (os.listdir(containers) if os.path.isdir(containers) else [])]
    return [a for a in found if a is not None]


def _check_host_port(store: Store, port: Port) -> None:
    """docker's "port is already allocated": another container's, or a socket of the host's
    (netavark's rules would hide it, or it theirs)."""
    for other in _attachments(store):
        for taken in other.port_list:
            overlapping = not taken.host_ip or not port.host_ip or taken.host_ip == port.host_ip
            if (taken.host_port, taken.protocol) == (port.host_port, port.protocol) \
                    and overlapping:
                raise Conflict(f"Bind for {port.host_ip or '0.0.0.0'}:{port.host_port} failed: "
                               f"port is already allocated (container "
                               f"{other.container_name})")
    check_port_free(port)


def check_port_free(port: Port) -> None:
    """Refuses a host port that a socket of the host holds (a bridge's ``-p``, and
    slirp4netns's, checked before the runtime starts)."""
    kind = socket.SOCK_DGRAM if port.protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as e:
            raise Conflict(f"cannot publish {port.host_ip or '0.0.0.0'}:{port.host_port}: "
                           f"{e.strerror}") from None


def setup(store: Store, container_id: str, name: str, network_name: str,
          publish: list[str]) -> Attachment:
    """The container's namespace on its network, its ports forwarded; torn down again if a
    step fails."""
    teardown(store, container_id)  # a previous run's, left by a crash
    network = get(store, network_name)
    with _lock(store):
        forget_previous_boot(store)
        used = {a.address for a in _attachments(store) if a.network == network.name} \
            | {network.gateway}
        address = next((str(a) for a in network.subnet.hosts() if str(a) not in used), None)
        if address is None:
            raise ImageError(f"network {network.name} has no free address left")
        ports = parse_all(publish)
        for port in ports:
            if port.host_port == 0:
                port.host_port = _free_port(port.protocol, port.host_ip)
            else:
                _check_host_port(store, port)
        netns = f"/run/netns/pyunion-{container_id[:24]}"
        aliases = [name] if network.dns_enabled else []
        options = {
            "container_id": container_id, "container_name": name,
            "port_mappings": [p.netavark() for p in ports],
            "networks": {network.name: {"static_ips": [address], "aliases": aliases,
                                        "interface_name": "eth0"}},
            "network_info": {network.name: asdict(network)},
        }
        found = Attachment(network.name, netns, address, _boot_id(),
                           [asdict(p) for p in ports], options=options, owner_pid=os.getpid())
        _write_attachment(store, container_id, found)
        # still under the lock, as podman holds its network lock: netavark runs one at a time
        # (two at once race to make the bridge, and a teardown removes a bridge it thinks
        # unused while a setup attaches to it)
        try:
            _ip_netns("add", netns)
            result = json.loads(_netavark(store, "setup", netns, options) or "{}")
            failure = None
        except (ImageError, ValueError) as e:
            failure = str(e)
    if failure is not None:
        teardown(store, container_id)
        raise ImageError(failure)
    interfaces = result.get(network.name, {}).get("interfaces", {})
    found.mac_address = interfaces.get("eth0", {}).get("mac_address", "")
    found.options["dns"] = {"servers": result.get(network.name, {}).get("dns_server_ips", []),
                            "search": result.get(network.name, {}).get(
                                "dns_search_domains", [])}
    _write_attachment(store, container_id, found)
    return found


def _ip_netns(verb: str, path: str) -> None:
    result = subprocess.run(["ip", "netns", verb, os.path.basename(path)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0 and verb == "add":
        raise ImageError(f"cannot create the network namespace {path}: "
                         f"{result.stderr.strip()}")


def teardown(store: Store, container_id: str) -> None:
    """Undoes ``setup``: netavark's interfaces, rules and aardvark-dns entry, the namespace,
    the state file. Quiet when there is nothing (or only an earlier boot's state) to undo."""
    path = _state_path(store, container_id)
    try:
        with open(path) as f:
            found = Attachment(**json.load(f))
    except (OSError, ValueError, TypeError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with _lock(store):
        forget_previous_boot(store)
        if found.boot_id == _boot_id() and os.path.exists(found.netns):
            options = {k: v for k, v in found.options.items() if k != "dns"}
            try:
                _netavark(store, "teardown", found.netns, options)
            finally:
                _ip_netns("delete", found.netns)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def published_ports(store: Store, container_id: str, mode: str) -> list[Port]:
    """The ports forwarded to a running container (a bridge's or slirp4netns's)."""
    if mode == SLIRP:
        from unionfs.image.container import slirp

        return slirp.ports(os.path.join(store.root, "containers", container_id))
    found = attachment(store, container_id)
    return found.port_list if found else []


def resolv_conf(found: Attachment | None) -> bytes | None:
    """The container's resolv.conf on a bridge: aardvark-dns's address first where the network
    has DNS, then the host's servers except loopback ones (unreachable from the namespace)."""
    if found is None:
        return None
    try:
        with open("/etc/resolv.conf") as f:
            host = f.read().splitlines()
    except OSError:
        host = []
    dns = found.options.get("dns", {})
    lines = [f"search {' '.join(dns['search'])}"] if dns.get("search") else []
    lines += [f"nameserver {s}" for s in dns.get("servers", [])]
    for line in host:
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(words[1]).is_loopback:
                    continue
        if words[:1] == ["search"] and dns.get("search"):
            continue
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()
