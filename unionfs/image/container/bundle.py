"""The OCI runtime bundle of a container: ``config.json`` from the image config and the command
line, with the pyunion mount as its root, plus the ``/etc`` files docker supplies.

No ``process.rlimits``: the process inherits the caller's limits (asking for more fails here,
without CAP_SYS_RESOURCE). ``linux.resources`` only for ``-m``/``--cpus``, which must not ask
for more than the caller has (checked at ``create``) and need root (a cgroup of its own).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from unionfs.image.container import slirp
from unionfs.image.container.idmap import rootless_id_map
from unionfs.image.container.initlayer import INIT_TARGET
from unionfs.image.container.network import Attachment, resolv_conf
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.errors import ImageError

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# docker's default capability set
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
]
# every capability Linux has (to 5.9), for --privileged and --cap-add ALL
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
INIT_BINARY = "/usr/bin/catatonit"  # static; Debian's package catatonit (podman's init)
CPU_PERIOD = 100_000
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Files bind-mounted into every container; runc makes empty targets for them in the upper
# when the image lacks them, which ``diff`` and ``commit`` leave out.
SUPPLIED_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def image_config(store, image_id: str) -> dict[str, Any]:
    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    return config.get("config") or {}


def process_args(config: dict[str, Any], spec: RunSpec) -> list[str]:
    entrypoint = spec.entrypoint if spec.entrypoint is not None else (config.get("Entrypoint")
                                                                      or [])
    command = spec.command if spec.command else (config.get("Cmd") or [])
    if spec.entrypoint is not None and not spec.command:
        command = []
    args = list(entrypoint) + list(command)
    if not args:
        raise ImageError("no command given and the image has no Cmd or Entrypoint")
    return args


def process_env(config: dict[str, Any], spec: RunSpec, hostname: str) -> list[str]:
    env: dict[str, str] = {}
    for item in [DEFAULT_PATH, f"HOSTNAME={hostname}"] + list(config.get("Env") or []) \
            + spec.env:
        key, sep, value = item.partition("=")
        if not sep:  # -e NAME takes the caller's value, as docker does
            if key in os.environ:
                env[key] = os.environ[key]
            continue
        env[key] = value
    if spec.tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return [f"{k}={v}" for k, v in env.items()]


def _lookup(rootfs: str, filename: str, name: str) -> list[str] | None:
    try:
        with open(os.path.join(rootfs, "etc", filename), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields and fields[0] == name:
                    return fields
    except OSError:
        return None
    return None


def process_user(rootfs: str, user: str | None) -> dict[str, Any]:
    """``uid[:gid]`` or ``name[:group]``, names looked up in the rootfs's /etc/passwd."""
    if not user:
        return {"uid": 0, "gid": 0}
    name, _, group = user.partition(":")
    if name.isdigit():
        uid, gid = int(name), 0
        entry = _passwd_by_uid(rootfs, uid)
        if entry:
            gid = int(entry[3])
    else:
        entry = _lookup(rootfs, "passwd", name)
        if entry is None or len(entry) < 4:
            raise ImageError(f"unable to find user {name}: no matching entries in passwd file")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = _lookup(rootfs, "group", group)
            if entry is None or len(entry) < 3:
                raise ImageError(f"unable to find group {group}: no matching entries in group "
                                 "file")
            gid = int(entry[2])
    return {"uid": uid, "gid": gid}


def _passwd_by_uid(rootfs: str, uid: int) -> list[str] | None:
    try:
        with open(os.path.join(rootfs, "etc", "passwd"), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 4 and fields[2] == str(uid):
                    return fields
    except OSError:
        return None
    return None


def write_etc_files(directory: str, hostname: str, extra_hosts: list[str] | None = None,
                    attached: Attachment | None = None) -> dict[str, str]:
    """resolv.conf (the host's; on a bridge, see network.resolv_conf), hosts and hostname, as
    docker supplies them."""
    files = {}
    resolv = os.path.join(directory, "resolv.conf")
    try:
        with open("/etc/resolv.conf", "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    data = resolv_conf(attached) or data
    with open(resolv, "wb") as f:
        f.write(data)
    files["/etc/resolv.conf"] = resolv
    hosts = os.path.join(directory, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                + (f"{attached.address}\t{hostname} {attached.container_name}\n" if attached else
                   f"127.0.1.1\t{hostname}\n")
                + "".join(map(_host_line, extra_hosts or [])))
    files["/etc/hosts"] = hosts
    name_file = os.path.join(directory, "hostname")
    with open(name_file, "w") as f:
        f.write(hostname + "\n")
    files["/etc/hostname"] = name_file
    return files


def _capability(name: str) -> str:
    name = name.strip().upper()
    name = name if name.startswith("CAP_") or name == "ALL" else "CAP_" + name
    if name != "ALL" and name not in ALL_CAPABILITIES:
        raise ImageError(f"unknown capability {name}")
    return name


def caller_capabilities() -> list[str]:
    """The capabilities this process could give (its bounding set): a container cannot have
    more than its caller (as when pyunion itself runs in a container)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("CapBnd:"))
        mask = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(ALL_CAPABILITIES)
    return [cap for bit, cap in enumerate(ALL_CAPABILITIES) if mask & (1 << bit)]


def capabilities(spec: RunSpec) -> list[str]:
    """docker's default set, or every one the caller has (--privileged), with --cap-drop then
    --cap-add (a capability the caller lacks is refused)."""
    allowed = caller_capabilities()
    if spec.privileged:
        return allowed
    caps = [c for c in CAPABILITIES if c in allowed]
    dropped = {_capability(c) for c in spec.cap_drop}
    if "ALL" in dropped:
        caps = []
    caps = [c for c in caps if c not in dropped]
    for name in map(_capability, spec.cap_add):
        if name != "ALL" and name not in allowed:
            raise ImageError(f"cannot add {name}: the caller does not have it")
        for cap in allowed if name == "ALL" else [name]:
            if cap not in caps:
                caps.append(cap)
    return caps


def _host_line(text: str) -> str:
    host, sep, address = text.partition(":")
    if not sep or not host or not address:
        raise ImageError(f"invalid --add-host {text!r} (HOST:IP)")
    try:
        import ipaddress

        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise ImageError(f"invalid IP address {address!r} in --add-host {text!r}") from None
    return f"{address.strip('[]')}\t{host}\n"


def caller_limits() -> tuple[int, float]:
    """The memory (bytes) and CPUs this process may use: its cgroup's limits (v1 or v2), the
    machine's memory, the CPUs it may run on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        groups = []
    for _, controllers, path in groups:
        names = controllers.split(",")
        candidates = []
        if "memory" in names:
            candidates.append(("memory", f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        if "cpu" in names:
            candidates.append(("cpu", f"/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us"))
        if controllers == "":
            candidates += [("memory", f"/sys/fs/cgroup{path}/memory.max"),
                           ("cpu", f"/sys/fs/cgroup{path}/cpu.max")]
        for kind, file in candidates:
            try:
                with open(file) as f:
                    fields = f.read().split()
            except OSError:
                continue
            if not fields or fields[0] in ("max", "-1"):
                continue
            if kind == "memory":
                memory = min(memory, int(fields[0]))
            elif len(fields) == 2:  # v2: quota period
                cpus = min(cpus, int(fields[0]) / int(fields[1]))
            else:
                try:
                    with open(file.replace("cfs_quota_us", "cfs_period_us")) as p:
                        cpus = min(cpus, int(fields[0]) / int(p.read()))
                except (OSError, ValueError):
                    pass
    return memory, cpus


def check_spec(spec: RunSpec) -> None:
    """The options ``create`` can refuse before anything is made."""
    capabilities(spec)
    for text in spec.extra_hosts:
        _host_line(text)
    if spec.init and not os.path.exists(INIT_BINARY):
        raise ImageError(f"--init needs {INIT_BINARY} (apt-get install catatonit)")
    if spec.memory is None and spec.cpus is None:
        return
    if os.geteuid() != 0:
        raise ImageError("-m/--memory and --cpus need root (a cgroup of the container's own)")
    memory, cpus = caller_limits()
    if spec.memory is not None and not 6 << 20 <= spec.memory <= memory:
        raise ImageError(f"--memory {spec.memory} is outside 6 MiB..{memory} bytes (the "
                         "caller's own limit: more cannot be given)")
    if spec.cpus is not None and not 0.01 <= spec.cpus <= cpus:
        raise ImageError(f"--cpus {spec.cpus:g} is outside 0.01..{cpus:g} (the CPUs the "
                         "caller has)")


def _volume(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ImageError(f"invalid volume {text!r} (expected HOST:CONTAINER[:ro|rw])")
    host, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ImageError(f"invalid volume mode {mode!r} in {text!r} (ro or rw)")
    if not os.path.isabs(host) or not os.path.exists(host):
        raise ImageError(f"volume source {host} must be an existing absolute path")
    if not os.path.isabs(target):
        raise ImageError(f"volume target {target} must be an absolute path")
    return {"destination": target, "type": "bind", "source": os.path.realpath(host),
            "options": ["rbind", mode]}


def build_config(container: Container, rootfs: str, config: dict[str, Any],
                 etc_files: dict[str, str], netns: str | None = None) -> dict[str, Any]:
    """The runtime's config.json; ``netns``: the network namespace to join (a bridge's)."""
    spec = container.spec
    hostname = spec.hostname or container.id[:12]
    if spec.network == "host":
        hostname = spec.hostname or socket.gethostname()
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for target, source in etc_files.items():
        mounts.append({"destination": target, "type": "bind", "source": source,
                       "options": ["rbind", "rprivate"]})
    mounts += [_volume(v) for v in spec.volumes]
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network != "host":
        namespaces.append({"type": "network", **({"path": netns} if netns else {})})
    caps = capabilities(spec)
    linux: dict[str, Any] = {"namespaces": namespaces, "maskedPaths": MASKED_PATHS,
                             "readonlyPaths": READONLY_PATHS}
    if spec.privileged:
        linux.update(maskedPaths=[], readonlyPaths=[])
        for mount in mounts:
            if mount["destination"] == "/sys":
                mount["options"] = [o for o in mount["options"] if o != "ro"]
    if spec.init:
        mounts.append({"destination": "/" + INIT_TARGET, "type": "bind",
                       "source": INIT_BINARY, "options": ["rbind", "ro"]})
    resources: dict[str, Any] = {}
    if spec.memory is not None:
        resources["memory"] = {"limit": spec.memory, "swap": spec.memory}
    if spec.cpus is not None:
        resources["cpu"] = {"quota": int(spec.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if resources:
        linux["resources"] = resources
    args = process_args(config, spec)
    if spec.init:
        args = ["/" + INIT_TARGET, "--", *args]
    if os.geteuid() != 0:
        _make_rootless(linux, mounts)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": process_user(rootfs, spec.user or config.get("User")),
            "args": args,
            "env": process_env(config, spec, hostname),
            "cwd": spec.workdir or config.get("WorkingDir") or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


def _make_rootless(linux: dict[str, Any], mounts: list[dict[str, Any]]) -> None:
    """As ``runc spec --rootless`` shapes it: a user namespace in which root is the caller
    (and ids 1..65535 the user's subordinate ids, where it has them: see idmap.py), /sys
    bind-mounted, no devpts group the namespace lacks."""
    ids = rootless_id_map()
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"], linux["gidMappings"] = ids.runtime_mappings()
    for mount in mounts:
        if mount["destination"] == "/sys":
            mount.update(type="none", source="/sys",
                         options=["rbind", "nosuid", "noexec", "nodev", "ro"])
        elif mount["destination"] == "/dev/pts" and not ids.several:
            mount["options"] = [o for o in mount["options"] if o != "gid=5"]


def write_bundle(directory: str, container: Container, rootfs: str,
                 config: dict[str, Any], attached: Attachment | None = None) -> str:
    """Writes ``<directory>/bundle/config.json`` and the supplied /etc files; returns the
    bundle path."""
    bundle = os.path.join(directory, "bundle")
    os.makedirs(bundle, exist_ok=True)
    spec = container.spec
    hostname = spec.hostname or (socket.gethostname() if spec.network == "host"
                                 else container.id[:12])
    if spec.network == slirp.MODE:  # its addresses are always slirp4netns's
        attached = Attachment(slirp.MODE, "", slirp.ADDRESS, "", [], options={
            "container_name": container.name, "dns": {"servers": [slirp.DNS], "search": []}})
    etc = write_etc_files(directory, hostname, spec.extra_hosts, attached)
    document = build_config(container, rootfs, config, etc,
                            attached.netns if attached else None)
    if spec.network == slirp.MODE:
        document["hooks"] = {"createRuntime": [slirp.hook(directory, spec.publish)]}
    temp = os.path.join(bundle, "config.json.tmp")
    with open(temp, "w") as f:
        json.dump(document, f, indent=1)
    os.rename(temp, os.path.join(bundle, "config.json"))
    return bundle
