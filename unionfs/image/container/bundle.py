"""The OCI runtime bundle of a container: ``config.json`` from the image config and the command
line, with the pyunion mount as its root, plus the ``/etc`` files docker supplies.

No ``process.rlimits`` and no ``linux.resources``: the process inherits the caller's limits
(asking for more fails here, without CAP_SYS_RESOURCE) and the runtime uses the cgroup layout it
finds.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from unionfs.image.container.idmap import rootless_id_map
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


def write_etc_files(directory: str, hostname: str) -> dict[str, str]:
    """resolv.conf (the host's), hosts and hostname, as docker supplies them."""
    files = {}
    resolv = os.path.join(directory, "resolv.conf")
    try:
        with open("/etc/resolv.conf", "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    with open(resolv, "wb") as f:
        f.write(data)
    files["/etc/resolv.conf"] = resolv
    hosts = os.path.join(directory, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"127.0.1.1\t{hostname}\n")
    files["/etc/hosts"] = hosts
    name_file = os.path.join(directory, "hostname")
    with open(name_file, "w") as f:
        f.write(hostname + "\n")
    files["/etc/hostname"] = name_file
    return files


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
                 etc_files: dict[str, str]) -> dict[str, Any]:
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
        namespaces.append({"type": "network"})
    caps = list(CAPABILITIES)
    linux: dict[str, Any] = {"namespaces": namespaces, "maskedPaths": MASKED_PATHS,
                             "readonlyPaths": READONLY_PATHS}
    if os.geteuid() != 0:
        _make_rootless(linux, mounts)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": process_user(rootfs, spec.user or config.get("User")),
            "args": process_args(config, spec),
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
                 config: dict[str, Any]) -> str:
    """Writes ``<directory>/bundle/config.json`` and the supplied /etc files; returns the
    bundle path."""
    bundle = os.path.join(directory, "bundle")
    os.makedirs(bundle, exist_ok=True)
    spec = container.spec
    hostname = spec.hostname or (socket.gethostname() if spec.network == "host"
                                 else container.id[:12])
    etc = write_etc_files(directory, hostname)
    document = build_config(container, rootfs, config, etc)
    temp = os.path.join(bundle, "config.json.tmp")
    with open(temp, "w") as f:
        json.dump(document, f, indent=1)
    os.rename(temp, os.path.join(bundle, "config.json"))
    return bundle
