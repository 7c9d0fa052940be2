"""Bridge networks (netavark, aardvark-dns), ``-p`` port forwarding and their cleanup.

Everything runs inside a network namespace the test makes (``unshare --net``, loopback up):
netavark's bridges, veths, NAT rules and ``ip_forward`` live and die there, and the host's own
network is never touched. The container namespaces pyunion makes (``/run/netns/pyunion-…``)
are checked gone at the end. The published port is served by busybox ``httpd`` in a container
and fetched from the namespace's host and, by name, from a second container; podman 4.3
(``--network-backend netavark``, runc, a private store and configuration) does the same in a
namespace of its own for the differential part.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.conftest import (
    IMAGE,
    Pyunion,
    _teardown,
    clean_env,
    pids_with_cmdline,
    wait_for,
)
from tests.container.test_differential_podman import Podman

pytestmark = pytest.mark.timeout(240)

FETCH = ("import sys, urllib.request\n"
         "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())")
HOLD = ("import socket, sys, time\ns = socket.socket()\n"
        "s.bind(('0.0.0.0', int(sys.argv[1])))\ns.listen()\nprint('ready', flush=True)\n"
        "time.sleep(60)")
HTTPD = ("busybox", "httpd", "-f", "-p", "80", "-h", "/srv/lower")   # serves a.txt: "alpha"
HTTPD_80_81 = ("sh", "-c", "busybox httpd -p 81 -h /srv/lower && exec " + " ".join(HTTPD))


class Netns:
    """A private network namespace (a ``sleep`` holds it); ``run`` runs a command in it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 3600"],
            start_new_session=True)
        self.enter = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--"]
        wait_for(lambda: "UP" in self.run("ip", "-br", "link", "show", "lo").stdout
                 or "UNKNOWN" in self.run("ip", "-br", "link", "show", "lo").stdout,
                 what="the namespace's loopback")

    def run(self, *args: str, check: bool = False, timeout: float = 30
            ) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.enter, *args], capture_output=True, text=True,
                                timeout=timeout)
        assert not check or result.returncode == 0, result
        return result

    def fetch(self, url: str) -> str:
        """``url`` fetched from the namespace's host (a few tries: a server just started)."""
        result = None
        for _ in range(50):
            result = self.run(sys.executable, "-c", FETCH, url)
            if result.returncode == 0:
                return result.stdout
            time.sleep(0.1)
        raise AssertionError(f"cannot fetch {url}: {result}")

    def leftovers(self, subnet_prefix: str) -> list[str]:
        """Interfaces other than lo and the rules of pyunion's networks, still there."""
        found = [f"interface {line.split()[0]}" for line in
                 self.run("ip", "-br", "link").stdout.splitlines()
                 if line.split() and line.split()[0] != "lo"]
        rules = self.run("iptables-save").stdout
        found += [f"rule {line}" for line in rules.splitlines() if subnet_prefix in line]
        return found

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def netns() -> Iterator[Netns]:
    space = Netns()
    try:
        yield space
    finally:
        space.close()


@pytest.fixture
def npx(netns: Netns, px: Pyunion) -> Pyunion:
    """``px`` whose commands run in the test's namespace (its teardown too: it comes after),
    with pyunion's own default network (root's: the bridge), not the tests' host network."""
    plain = px.command
    px.command = lambda *args: [*netns.enter, *plain(*args)]  # type: ignore[method-assign]
    px.extra_env["PYUNION_NETWORK"] = ""
    return px


def sandbox(px: Pyunion, name: str) -> str:
    return json.loads(px("inspect", name).stdout)[0]["NetworkSettings"]["SandboxKey"]


def assert_nothing_left(px: Pyunion, netns: Netns, sandboxes: list[str]) -> None:
    assert sandboxes and all(sandboxes)
    assert not [s for s in sandboxes if os.path.exists(s)], "network namespaces left"
    assert netns.leftovers("10.90.") == []
    aardvark = px.root / "networks" / "run" / "aardvark-dns"
    entries = [p.name for p in aardvark.iterdir()] if aardvark.is_dir() else []
    assert [e for e in entries if e != "aardvark.pid"] == [], entries
    wait_for(lambda: not pids_with_cmdline("aardvark-dns", str(px.root)), timeout=10,
             what="aardvark-dns to exit")


def test_published_port_and_names_on_a_user_network(npx, netns):
    assert npx("network", "create", "backend").stdout == "backend\n"
    npx("run", "-d", "--name", "web", "--network", "backend", "-p", "8080:80", IMAGE, *HTTPD)
    # from the namespace's host: its loopback and the bridge's address
    assert netns.fetch("http://127.0.0.1:8080/a.txt") == "alpha\n"
    settings = json.loads(npx("inspect", "web").stdout)[0]["NetworkSettings"]
    gateway = settings["Networks"]["backend"]["Gateway"]
    assert gateway == "10.90.1.1" and settings["IPAddress"].startswith("10.90.1.")
    assert netns.fetch(f"http://{gateway}:8080/a.txt") == "alpha\n"
    assert settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    # by name, from a second container on the same network (aardvark-dns)
    out = npx("run", "--rm", "--network", "backend", IMAGE, "busybox", "wget", "-q", "-O-",
              "http://web/a.txt")
    assert out.stdout == "alpha\n"
    assert npx("port", "web").stdout == "80/tcp -> 0.0.0.0:8080\n"
    assert npx("port", "web", "80").stdout == "0.0.0.0:8080\n"
    assert npx("ps", "--format", "{{.Ports}}").stdout == "0.0.0.0:8080->80/tcp\n"
    # the host port is taken: by that container, or by a socket of the host's
    taken = npx("run", "--rm", "--network", "backend", "-p", "8080:81", IMAGE, "true",
                check=False)
    assert taken.returncode == 125 and "port is already allocated" in taken.stderr, taken
    holder = subprocess.Popen([*netns.enter, sys.executable, "-c", HOLD, "8090"],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        held = npx("run", "--rm", "--network", "backend", "-p", "8090:80", IMAGE, "true",
                   check=False)
        assert held.returncode == 125 and "Address already in use" in held.stderr, held
    finally:
        holder.kill()
        holder.wait()
    # a network in use stays; with its container gone it goes, and nothing of it is left
    used = npx("network", "rm", "backend", check=False)
    assert used.returncode == 1 and "is being used" in used.stderr
    keys = [sandbox(npx, "web")]
    npx("rm", "-f", "web")
    assert npx("port", "web", check=False).returncode == 1
    assert npx("network", "rm", "backend").stdout == "backend\n"
    assert npx("network", "ls", "--format", "{{.Name}}").stdout == "pyunion\n"
    assert_nothing_left(npx, netns, keys)


def test_default_bridge_addresses_and_a_free_port(npx, netns):
    npx("run", "-d", "--name", "a", "--network", "bridge", "-p", "127.0.0.1::80", IMAGE,
        *HTTPD)
    npx("run", "-d", "--name", "b", IMAGE, "sleep", "600")   # root's default: the bridge
    a, b = (json.loads(npx("inspect", n).stdout)[0]["NetworkSettings"] for n in "ab")
    assert a["IPAddress"] != b["IPAddress"]
    assert {a["Gateway"], b["Gateway"]} == {"10.90.0.1"}
    host = a["Ports"]["80/tcp"][0]
    assert host["HostIp"] == "127.0.0.1" and int(host["HostPort"]) > 0
    assert netns.fetch(f"http://127.0.0.1:{host['HostPort']}/a.txt") == "alpha\n"
    # the default network has no DNS (as docker's and podman's), but addresses route
    out = npx("exec", "b", "busybox", "wget", "-q", "-O-", f"http://{a['IPAddress']}/a.txt")
    assert out.stdout == "alpha\n"
    hosts = npx("exec", "b", "cat", "/etc/hosts").stdout
    assert f"{b['IPAddress']}\t" in hosts and "\tb" not in hosts.split(b["IPAddress"])[0]
    keys = [sandbox(npx, "a"), sandbox(npx, "b")]
    npx("stop", "-t", "1", "b")   # its process ended: its network goes at once
    assert not os.path.exists(keys[1])
    npx("rm", "-f", "a", "b")
    assert_nothing_left(npx, netns, keys)


def test_the_default_is_the_bridge_and_leaves_nothing(npx, netns):
    """Root's default network is the default bridge (podman 4.3's and docker's);
    ``run --rm IMAGE true`` works run concurrently (netavark one at a time) and leaves
    nothing, after rm, a SIGKILLed ``pyunion run`` and the next command."""
    out = npx("run", "--rm", IMAGE, "busybox", "ip", "-o", "-4", "addr", "show", "eth0")
    assert "inet 10.90.0.2/24" in out.stdout, out
    npx("create", "--name", "c", IMAGE)
    # podman's NetworkMode for a bridge; the network's name in ps
    assert npx("inspect", "-f", "{{.HostConfig.NetworkMode}}", "c").stdout == "bridge\n"
    assert npx("ps", "-a", "--format", "{{.Networks}}").stdout == "pyunion\n"
    npx("rm", "c")
    # $PYUNION_NETWORK sets another default; --network beats it
    npx("create", "--name", "h", IMAGE, env={"PYUNION_NETWORK": "host"})
    npx("create", "--name", "n", "--network", "none", IMAGE, env={"PYUNION_NETWORK": "host"})
    assert npx("ps", "-a", "--format", "{{.Names}} {{.Networks}}").stdout.split("\n")[:2] \
        in (["n none", "h host"], ["h host", "n none"]), npx("ps", "-a")
    npx("rm", "h", "n")
    for _ in range(2):
        runs = [npx.popen("run", "--rm", IMAGE, "true") for _ in range(5)]
        for started in runs:
            assert started.wait() == 0, started.stderr()
            assert started.stderr() == ""
    assert npx("ps", "-aq").stdout == ""
    # the pyunion run killed: its container runs on, ends, and the next command tears down
    killed = npx.popen("run", "--name", "k", IMAGE, "sleep", "2")
    wait_for(lambda: npx("ps", "-q", "--filter", "name=k").stdout.strip() != "",
             what="the container to run")
    keys = [sandbox(npx, "k")]
    assert os.path.exists(keys[0])
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    wait_for(lambda: not npx.runc_containers(), timeout=20, what="the container to end")
    assert npx("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout.startswith("k Exited")
    assert_nothing_left(npx, netns, keys)
    npx("rm", "k")


def test_two_stores_at_once(npx, netns, base_tar, tmp_path):
    """Two stores' containers on their default networks at once: netavark runs one at a time
    on the host (both make and remove the same bridge and chains)."""
    (tmp_path / "other-tmp").mkdir()
    other = Pyunion(tmp_path / "other", tmp_path / "other-tmp")
    other.root.mkdir()
    plain = other.command
    other.command = lambda *args: [*netns.enter, *plain(*args)]  # type: ignore[method-assign]
    other.extra_env["PYUNION_NETWORK"] = ""
    try:
        other("load", "-q", "-i", base_tar)
        for _ in range(2):
            runs = [store.popen("run", "--rm", IMAGE, "true")
                    for _ in range(3) for store in (npx, other)]
            for started in runs:
                assert started.wait() == 0, started.stderr()
        assert netns.leftovers("10.90.") == []
    finally:
        left = _teardown(other)
    assert left == []


def test_a_run_killed_while_it_sets_up_the_network(npx, netns):
    """SIGKILL of ``pyunion run`` once its network's state is written (netavark at work, the
    rootfs being mounted): the next command tears the network down, ``rm`` the mount."""
    killed = npx.popen("run", "--name", "early", IMAGE, "sleep", "600")
    containers = npx.root / "containers"
    wait_for(lambda: any(containers.glob("*/network.json")), interval=0.002,
             what="the network's state")
    state = next(containers.glob("*/network.json"))
    key = json.loads(state.read_text())["netns"]
    time.sleep(0.03)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert npx("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout == "early Created\n"
    assert not state.exists()
    assert_nothing_left(npx, netns, [key])
    npx("rm", "early")   # the mount a killed mount left too (the fixture checks for mounts)


def test_a_killed_run_and_a_reboot_leave_nothing(npx, netns):
    killed = npx.popen("run", "--name", "k", "--network", "bridge", "-p", "8081:80", IMAGE,
                       *HTTPD)
    wait_for(lambda: npx("ps", "-q", "--filter", "name=k").stdout.strip() != "",
             what="the container to run")
    keys = [sandbox(npx, "k")]
    os.kill(killed.pid, signal.SIGKILL)   # pyunion run dies; its container runs on
    killed.wait()
    assert netns.fetch("http://127.0.0.1:8081/a.txt") == "alpha\n"
    npx("rm", "-f", "k")
    assert_nothing_left(npx, netns, keys)
    # a reboot: the state of an earlier boot (its namespace, bridge and aardvark-dns went with
    # the kernel) is dropped at the next command, no teardown attempted
    npx("create", "--name", "old", "--network", "bridge", IMAGE, "sleep", "600")
    container_id = npx("inspect", "-f", "{{.Id}}", "old").stdout.strip()
    stale = {"network": "pyunion", "netns": "/run/netns/pyunion-gone", "address": "10.90.0.2",
             "boot_id": "an-earlier-boot", "ports": [], "options": {}}
    (npx.root / "containers" / container_id / "network.json").write_text(json.dumps(stale))
    (npx.root / "networks" / "boot_id").write_text("an-earlier-boot")
    (npx.root / "networks" / "run" / "aardvark-dns").mkdir(parents=True, exist_ok=True)
    (npx.root / "networks" / "run" / "aardvark-dns" / "backend").write_text("stale\n")
    assert npx("port", "old").stdout == ""
    npx("start", "old")  # set up afresh: the old boot's files gone, its address free again
    assert not (npx.root / "networks" / "run" / "aardvark-dns" / "backend").exists()
    assert json.loads(npx("inspect", "old").stdout)[0]["NetworkSettings"]["IPAddress"] \
        == "10.90.0.2"
    keys = [sandbox(npx, "old")]
    npx("rm", "-f", "old")
    assert_nothing_left(npx, netns, keys)


def test_the_default_without_its_tools_is_one_line(px):
    """netavark missing (hidden by an empty /usr/lib/podman in a mount namespace of the test's
    own), or ip/iptables (not on PATH): one line naming the package, exit 125, no container
    made, as podman fails rather than fall back to the host's network; --network host runs."""
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none /usr/lib/podman && exec "$@"', "sh"]
    for prefix, env, package in ((hide, {}, "apt-get install netavark"),
                                 ([], {"PATH": "/nonexistent"}, "apt-get install iproute2")):
        result = subprocess.run([*prefix, *px.command("run", "--rm", IMAGE, "true")],
                                env=clean_env({"PYUNION_NETWORK": "", **env}),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 125, result
        assert re.fullmatch(r"pyunion: error: bridge networks need [^\n]*--network host "
                            r"needs nothing\n", result.stderr), result
        assert package in result.stderr
    assert px("ps", "-aq").stdout == ""
    out = subprocess.run([*hide, *px.command("run", "--rm", "--network", "host", IMAGE,
                                             "echo", "ran")],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "ran\n"), out


def test_bad_network_input(npx):
    for args, message in [
        (("run", "--rm", "--network", "nosuch", IMAGE, "true"), "network nosuch not found"),
        (("run", "--rm", "--network", "bridge", "-p", "80:x", IMAGE, "true"),
         "invalid publish"),
        (("run", "--rm", "--network", "none", "-p", "80:80", IMAGE, "true"),
         "needs a bridge network"),
        (("run", "--rm", "-p", "8080-8085:80", IMAGE, "true"),
         "host and container port ranges have different lengths: 6 vs 1"),
        (("run", "--rm", "-p", "81-80", IMAGE, "true"), "must be higher than the start port"),
    ]:
        result = npx(*args, check=False)
        assert result.returncode == 125, result
        assert re.fullmatch(r"pyunion: error: [^\n]*\n", result.stderr), result
        assert message in result.stderr
    assert npx("ps", "-aq").stdout == ""
    npx("network", "create", "--subnet", "10.91.7.0/24", "--gateway", "10.91.7.254", "n1")
    for args, message in [
        (("network", "create", "n1"), "already used"),
        (("network", "create", "--subnet", "10.91.7.128/25", "n2"), "already used"),
        (("network", "create", "--subnet", "nonsense", "n2"), "invalid subnet"),
        (("network", "create", "bad/name"), "invalid network name"),
        (("network", "rm", "pyunion"), "cannot be removed"),
        (("network", "inspect", "nosuch"), "not found"),
    ]:
        result = npx(*args, check=False)
        assert result.returncode != 0 and message in result.stderr, result
    inspected = json.loads(npx("network", "inspect", "n1").stdout)[0]
    assert inspected["subnets"] == [{"subnet": "10.91.7.0/24", "gateway": "10.91.7.254"}]
    assert npx("network", "ls", "-q").stdout == "n1\npyunion\n"
    npx("create", "--name", "user", "--network", "n1", IMAGE)
    npx("network", "create", "n3")
    assert npx("network", "prune", "-f").stdout == "n3\n"   # n1 is used, pyunion stays
    npx("rm", "user")
    npx("network", "rm", "n1")


# --------------------------------------------------------------------------- podman


@pytest.fixture
def podman_netns(base_tar) -> Iterator[tuple[Podman, Netns]]:
    podman = Podman("127.0.0.1:1")
    conf = Path(podman.env["CONTAINERS_CONF"])
    conf.write_text(conf.read_text().replace('netns = "host"', 'netns = "bridge"')
                    + 'network_backend = "netavark"\n')
    run_dir = Path("/run/containers/networks")   # rootful podman's netavark files
    existing = set(run_dir.iterdir()) if run_dir.is_dir() else set()
    space = Netns()
    try:
        subprocess.run(podman.command("load", "-q", "-i", str(base_tar)), env=podman.env,
                       check=True, capture_output=True, timeout=120)
        yield podman, space
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([*space.enter, *podman.command("rm", "-a", "-f", "-t", "0")],
                           env=podman.env, capture_output=True, timeout=120)
        podman.close()
        space.close()
        for made in (set(run_dir.iterdir()) if run_dir.is_dir() else set()) - existing:
            if made.is_dir():
                shutil.rmtree(made, ignore_errors=True)
            else:
                made.unlink(missing_ok=True)


def test_against_podman(npx, netns, podman_netns):
    podman, space = podman_netns

    def pd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*space.enter, *podman.command(*args)], env=podman.env,
                                capture_output=True, text=True, timeout=120)
        assert not check or result.returncode == 0, result
        return result

    image = pd("images", "-q").stdout.split()[0]   # loaded from pyunion's save
    outputs = {}
    for tool, run, where in (("pyunion", npx, netns), ("podman", pd, space)):
        assert run("network", "create", "--subnet", "10.91.3.0/24", "backend").stdout \
            == "backend\n"
        run("run", "-d", "--name", "web", "--network", "backend", "-p", "8080:80",
            "-p", "127.0.0.1:8090-8091:80-81", IMAGE if tool == "pyunion" else image,
            *HTTPD_80_81)
        fetched = where.fetch("http://127.0.0.1:8080/a.txt")
        ranged = where.fetch("http://127.0.0.1:8090/a.txt") \
            + where.fetch("http://127.0.0.1:8091/a.txt")
        by_name = run("run", "--rm", "--network", "backend",
                      IMAGE if tool == "pyunion" else image, "busybox", "wget", "-q", "-O-",
                      "http://web/a.txt").stdout
        outputs[tool] = {
            "fetched": fetched, "by_name": by_name, "ranged": ranged,
            "bindings": {port: sorted(hosts, key=lambda h: (h["HostIp"], h["HostPort"]))
                         for port, hosts in json.loads(run(
                             "inspect", "-f", "{{json .HostConfig.PortBindings}}",
                             "web").stdout).items()},
            "mode": run("inspect", "-f", "{{.HostConfig.NetworkMode}}", "web").stdout,
            # sorted: podman's order of several mappings varies from run to run
            "port": sorted(run("port", "web").stdout.splitlines()),
            "ps_ports": sorted(run("ps", "--format", "{{.Ports}}").stdout.strip().split(", ")),
            "ls": run("network", "ls").stdout.splitlines()[0].split(),
            "inspect": json.loads(run("network", "inspect", "backend").stdout)[0],
            "rm_used": run("network", "rm", "backend", check=False).returncode != 0,
        }
        run("rm", "-f", "web")
        assert run("network", "rm", "backend").stdout == "backend\n"
        outputs[tool]["left"] = where.leftovers("10.91.3.")
    mine, theirs = outputs["pyunion"], outputs["podman"]
    assert mine["fetched"] == theirs["fetched"] == "alpha\n"
    assert mine["by_name"] == theirs["by_name"] == "alpha\n"
    assert mine["ranged"] == theirs["ranged"] == "alpha\nalpha\n"
    for key in ("port", "ps_ports", "bindings", "mode", "ls", "rm_used", "left"):
        assert mine[key] == theirs[key], (key, mine[key], theirs[key])
    for key in ("name", "driver", "subnets", "ipv6_enabled", "internal", "dns_enabled",
                "ipam_options"):
        assert mine["inspect"][key] == theirs["inspect"][key], key
    assert set(mine["inspect"]) == set(theirs["inspect"])


# --------------------------------------------------------------------------- ordinary users

SLIRP_SESSION = """
set -e
{p} import -q rootfs base:1
{p} run -d --name web -p 8089:80 base:1 busybox httpd -f -p 80 -h /srv
{p} port web
{p} ps --format '{{{{.Ports}}}}'
{fetch} http://127.0.0.1:8089/a.txt
{p} run --rm base:1 sh -c 'cat /etc/resolv.conf; busybox ip -o -4 addr'
{p} run --rm --network slirp4netns -p 8089:80 base:1 true 2>&1 || echo "taken: $?"
{p} inspect -f '{{{{.HostConfig.NetworkMode}}}}' web
{p} rm -f web >/dev/null
{p} run --rm --network bridge base:1 true || echo "bridge refused: $?"
PATH=/nonexistent {p} run --rm base:1 true || echo "no slirp4netns: $?"
"""


def test_an_ordinary_user_publishes_a_port_with_slirp4netns() -> None:
    """As uid 65534 in a private network namespace (and a /dev with /dev/net/tun): a port
    forwarded by slirp4netns, its addresses in the container, nothing left running after rm."""
    from tests.cli_helpers import NOBODY, public_dir
    from tests.test_rootless_images import PYUNION, WITH_USER_DEVICES

    harness = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               *WITH_USER_DEVICES]
    with public_dir() as pub:
        rootfs = pub / "rootfs"
        for d in ("bin", "etc", "srv"):
            (rootfs / d).mkdir(parents=True)
        (rootfs / "srv/a.txt").write_text("alpha\n")
        (rootfs / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
        os.chmod(rootfs / "bin/busybox", 0o755)
        for applet in ("sh", "cat"):
            os.symlink("busybox", rootfs / "bin" / applet)
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        for dirpath, dirnames, filenames in os.walk(pub):
            for name in [*dirnames, *filenames, "."]:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
        env = {**os.environ, "HOME": str(pub), "XDG_DATA_HOME": str(pub / "data"),
               "XDG_RUNTIME_DIR": str(pub), "PYTHONPATH": os.getcwd()}
        env.pop("PYUNION_ROOT", None)
        fetch = f"{sys.executable} -c '{FETCH}'"
        session = SLIRP_SESSION.format(p=PYUNION, fetch=fetch)
        try:
            result = subprocess.run([*harness, "sh", "-c", session], cwd=pub, env=env,
                                    capture_output=True, text=True, timeout=180)
            out = result.stdout
            assert result.returncode == 0, out + result.stderr
            assert "80/tcp -> 0.0.0.0:8089\n0.0.0.0:8089->80/tcp\nalpha\n" in out
            assert "\nslirp4netns\n" in out   # an ordinary user's default network
            assert "nameserver 10.0.2.3\n" in out and "inet 10.0.2.100/24" in out
            assert "Address already in use\ntaken: 125\n" in out
            assert "bridge refused: 125" in out and "--network slirp4netns" in result.stderr
            assert "no slirp4netns: 125" in out
            assert "needs slirp4netns (apt-get install slirp4netns)" in result.stderr
            assert not pids_with_cmdline("slirp4netns", str(pub)), "slirp4netns left"
        finally:
            for pid in pids_with_cmdline(str(pub)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
