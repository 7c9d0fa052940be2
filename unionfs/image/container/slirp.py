"""``--network slirp4netns``: a network of the container's own that needs no root, as rootless
podman's: slirp4netns joins the container's (user and) network namespace, makes ``tap0``
(10.0.2.100, gateway 10.0.2.2, DNS 10.0.2.3) and relays its traffic through ordinary sockets of
the caller; ``-p`` ports are forwarded with its API (``add_hostfwd``).

It is started by a ``createRuntime`` hook of the runtime (``python -m
unionfs.image.container.slirp DIR``, the runtime's state on stdin): the namespace exists by
then and the container's process has not started, so its network is up when it starts. Its
pid is kept in ``DIR/slirp4netns.pid``; ``stop`` ends it when the container ends (its tap
device would keep the namespace alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys

from unionfs.image.container.network import Port, check_port_free, parse_all
from unionfs.image.errors import ImageError

MODE = "slirp4netns"
ADDRESS, GATEWAY, DNS = "10.0.2.100", "10.0.2.2", "10.0.2.3"
PID_FILE = "slirp4netns.pid"
SOCKET = "slirp4netns.sock"
PORTS_FILE = "slirp4netns.ports"
TUN = "/dev/net/tun"


def binary() -> str:
    path = shutil.which("slirp4netns")
    if path is None:
        raise ImageError("--network slirp4netns (an ordinary user's default) needs "
                         "slirp4netns (apt-get install slirp4netns); --network host needs "
                         "nothing")
    return path


def check() -> None:
    """slirp4netns and the tun device it needs are there (one line, not the runtime's hook
    error, when they are not)."""
    binary()
    if not os.access(TUN, os.R_OK | os.W_OK):
        raise ImageError(f"--network slirp4netns (an ordinary user's default) needs {TUN} "
                         "(modprobe tun), which this user cannot open; --network host needs "
                         "nothing")


def hook(directory: str, publish: list[str]) -> dict:
    """The runtime hook that starts slirp4netns for the container of ``directory``."""
    return {"path": sys.executable,
            "args": [sys.executable, "-m", "unionfs.image.container.slirp", directory,
                     *publish],
            "timeout": 30}


def api_socket(directory: str) -> str:
    """Its API socket: a unix socket's path must be short (< 108 bytes), which a store's
    container directory may not be; the runtime directory or /tmp then."""
    path = os.path.join(directory, SOCKET)
    if len(path) < 100:
        return path
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    name = f"pyunion-slirp-{os.path.basename(directory)[:24]}.sock"
    return os.path.join(base if len(base) < 60 else "/tmp", name)


def start(directory: str, pid: int, publish: list[str]) -> None:
    """slirp4netns for the namespace of ``pid``, ready, with ``publish``'s ports forwarded."""
    stop(directory)
    ports = parse_all(publish)
    api = api_socket(directory)
    ready_read, ready_write = os.pipe()
    log = open(os.path.join(directory, "slirp4netns.log"), "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [binary(), "--configure", "--mtu=65520", "--disable-host-loopback",
             "--api-socket", api, "--ready-fd", str(ready_write), str(pid), "tap0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_write,),
            start_new_session=True)
    finally:
        log.close()
        os.close(ready_write)
    with open(os.path.join(directory, PID_FILE), "w") as f:
        f.write(str(proc.pid))
    try:
        ready, _, _ = select.select([ready_read], [], [], 20)
        if not ready or os.read(ready_read, 1) != b"1":
            raise ImageError("slirp4netns did not come up: see "
                             + os.path.join(directory, "slirp4netns.log"))
    finally:
        os.close(ready_read)
    for port in ports:
        if port.host_port == 0:
            port.host_port = _free_port(port)
        _forward(api, port)
    with open(os.path.join(directory, PORTS_FILE), "w") as f:
        json.dump([p.__dict__ for p in ports], f)


def check_ports(publish: list[str]) -> None:
    """Refuses a host port that a socket of the host holds, before the runtime starts (the
    hook's failure would only be the runtime's)."""
    for port in parse_all(publish):
        if port.host_port != 0:
            check_port_free(port)


def _free_port(port: Port) -> int:
    kind = socket.SOCK_DGRAM if port.protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((port.host_ip or "0.0.0.0", 0))
        return s.getsockname()[1]


def _forward(api: str, port: Port) -> None:
    request = {"execute": "add_hostfwd", "arguments": {
        "proto": port.protocol, "host_addr": port.host_ip or "0.0.0.0",
        "host_port": port.host_port, "guest_port": port.container_port}}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(api)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    answer = json.loads(reply or b"{}")
    if "error" in answer:
        raise ImageError(f"cannot publish {port.host_port}: "
                         f"{answer['error'].get('desc', answer['error'])}")


def ports(directory: str) -> list[Port]:
    """The ports forwarded while slirp4netns runs."""
    if _running_pid(directory) is None:
        return []
    try:
        with open(os.path.join(directory, PORTS_FILE)) as f:
            return [Port(**p) for p in json.load(f)]
    except (OSError, ValueError, TypeError):
        return []


def _running_pid(directory: str) -> int | None:
    """slirp4netns's pid, if that process is still this container's slirp4netns."""
    try:
        with open(os.path.join(directory, PID_FILE)) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    return pid if api_socket(directory).encode() in cmdline else None


def stop(directory: str) -> None:
    pid = _running_pid(directory)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for path in (os.path.join(directory, PID_FILE), os.path.join(directory, PORTS_FILE),
                 api_socket(directory)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: list[str]) -> int:
    directory, publish = argv[0], argv[1:]
    state = json.load(sys.stdin)
    try:
        start(directory, int(state["pid"]), publish)
    except (ImageError, OSError, ValueError) as e:
        # no newline: the runtime quotes it in its own one-line error
        print(f"slirp4netns: {e}", file=sys.stderr, end="")
        stop(directory)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
