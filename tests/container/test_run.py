"""``pyunion run``: the process's exit status, its environment, user, directories, mounts and
namespaces, under real runc on a real pyunion mount of the image."""

from __future__ import annotations

import os
import uuid

from tests.container.conftest import IMAGE, mounts_under, pids_with_cmdline, wait_for


def host_interfaces() -> set[str]:
    with open("/proc/net/dev") as f:
        return {line.split(":")[0].strip() for line in f.readlines()[2:]}


def container_interfaces(text: str) -> set[str]:
    return {line.split(":")[0].strip() for line in text.splitlines()[2:] if ":" in line}


def test_exit_status_is_runs_status(px):
    statuses = {script: px("run", "--rm", IMAGE, "sh", "-c", script, check=False).returncode
                for script in ("exit 7", "true", "exit 255")}
    assert statuses == {"exit 7": 7, "true": 0, "exit 255": 255}


def test_kernel_is_the_hosts(px):
    assert px("run", "--rm", IMAGE, "uname", "-r").stdout.strip() == os.uname().release


def test_env_from_image_config_and_e(px):
    env = dict(line.split("=", 1) for line in
               px("run", "--rm", IMAGE, "env").stdout.splitlines() if "=" in line)
    assert env["FOO"] == "bar"
    assert "/bin" in env["PATH"].split(":")
    out = px("run", "--rm", "-e", "FOO=baz", "-e", "NEW=1", "-e", "FROM_CALLER", IMAGE,
             "env", env={"FROM_CALLER": "caller-value"}).stdout.splitlines()
    assert "FOO=baz" in out and "FOO=bar" not in out
    assert "NEW=1" in out
    assert "FROM_CALLER=caller-value" in out


def test_workdir_from_config_and_w(px):
    assert px("run", "--rm", IMAGE, "pwd").stdout.strip() == "/work"
    assert px("run", "--rm", "-w", "/srv/lower", IMAGE, "pwd").stdout.strip() == "/srv/lower"


USERS = [
    (None, ["0", "0", "root"]),
    ("app", ["1000", "1000", "app"]),
    ("1000:1000", ["1000", "1000", "app"]),
    ("1000", ["1000", "1000", "app"]),
    ("app:root", ["1000", "0", "app"]),
]


def test_user(px):
    """-u NAME, UID, UID:GID and NAME:GROUP, names from the image's /etc/passwd and group."""
    seen = {}
    for user, _ in USERS:
        opts = ["-u", user] if user else []
        seen[user] = px("run", "--rm", *opts, IMAGE, "sh", "-c",
                        "id -u; id -g; id -un").stdout.split()
    assert seen == dict(USERS)


def test_unknown_user_is_an_error(px):
    result = px("run", "--rm", "-u", "nobody-here", IMAGE, "true", check=False)
    assert result.returncode != 0
    assert "nobody-here" in result.stderr


def test_hostname(px):
    out = px("run", "--rm", "--network", "none", "--hostname", "box1", IMAGE, "sh", "-c",
             "hostname; cat /etc/hostname; grep -c box1 /etc/hosts").stdout.split()
    assert out == ["box1", "box1", "1"]


def test_bind_mount_rw_and_ro(px, workdir):
    host = workdir / "vol"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    out = px("run", "--rm", "-v", f"{host}:/data", IMAGE, "sh", "-c",
             "cat /data/in.txt && echo from-container > /data/out.txt").stdout
    assert out == "from host\n"
    assert (host / "out.txt").read_text() == "from-container\n"

    result = px("run", "--rm", "-v", f"{host}:/data:ro", IMAGE, "sh", "-c",
                "cat /data/in.txt; echo nope > /data/ro.txt", check=False)
    assert result.stdout == "from host\n"
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert not (host / "ro.txt").exists()


def test_read_only_rootfs(px, workdir):
    result = px("run", "--name", "ro", "--read-only", IMAGE, "sh", "-c",
                "touch /newfile; echo $? ; echo x > /srv/lower/a.txt", check=False)
    assert result.returncode != 0
    assert result.stdout.split()[0] != "0", str(result)
    assert "Read-only file system" in result.stderr
    changes = px("diff", "ro").stdout
    assert "/newfile" not in changes and "/srv" not in changes, changes


def test_network_none_and_host(px):
    out = px("run", "--rm", "--network", "none", IMAGE, "cat", "/proc/net/dev").stdout
    assert container_interfaces(out) == {"lo"}
    out = px("run", "--rm", IMAGE, "cat", "/proc/net/dev").stdout
    assert container_interfaces(out) == host_interfaces()


def test_supplied_etc_files(px):
    out = px("run", "--rm", IMAGE, "sh", "-c",
             "for f in hosts resolv.conf hostname; do test -f /etc/$f || echo missing $f; done;"
             "cat /etc/resolv.conf").stdout
    assert "missing" not in out
    with open("/etc/resolv.conf") as f:
        assert out == f.read()
    hosts = px("run", "--rm", IMAGE, "cat", "/etc/hosts").stdout
    assert "localhost" in hosts


def test_runtime_artifacts_are_not_changes(px):
    """The mount targets runc makes (/proc, /dev, /sys, the /etc files) are not in diff."""
    px("run", "--name", "idle", IMAGE, "true")
    assert px("diff", "idle").stdout == ""


def test_dev_nodes_usable(px):
    out = px("run", "--rm", IMAGE, "sh", "-c",
             "echo gone > /dev/null && head -c 5 /dev/zero | wc -c && "
             "head -c 16 /dev/urandom | wc -c && test -c /dev/null && test -c /dev/urandom "
             "&& echo ok").stdout.split()
    assert out == ["5", "16", "ok"]


def test_rm_leaves_nothing(px):
    assert px("run", "--rm", IMAGE, "sh", "-c", "echo x > /scratch; exit 3",
              check=False).returncode == 3
    assert px("ps", "-aq").stdout == ""
    assert mounts_under(px.tmp) == []
    assert px.runc_containers() == []
    assert os.listdir(px.root / "containers") == []


def test_detached_rm_leaves_nothing(px):
    px("run", "-d", "--rm", "--name", "brief", IMAGE, "sh", "-c", "sleep 0.2")
    wait_for(lambda: px("ps", "-aq").stdout == "", timeout=30, what="the container to go")
    wait_for(lambda: mounts_under(px.tmp) == [], timeout=10, what="the rootfs to be unmounted")
    assert px.runc_containers() == []


def _processes_with_env(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_daemon_started_ahead_serves_the_mount_or_exits(px):
    """run starts its mount daemon before it knows the mount (unionfs.prestart):
    used, it shows the mount's command line; not needed, it exits with the command."""
    marker = "PYUNION_TEST_MARK=" + uuid.uuid4().hex
    env = {marker.partition("=")[0]: marker.partition("=")[2]}
    result = px("run", "--rm", "--pull", "never", "no/such:image", "true", check=False, env=env)
    assert result.returncode == 125, result
    wait_for(lambda: not _processes_with_env(marker), timeout=10,
             what="the daemon started ahead and not needed exits")

    px("create", "--name", "ahead", IMAGE, "sleep", "30")
    point = px("mount", "ahead").stdout.strip()
    daemons = pids_with_cmdline("mount_helper", point)
    assert len(daemons) == 1, daemons
    px("umount", "ahead")
    wait_for(lambda: not pids_with_cmdline("mount_helper", point), timeout=10,
             what="the daemon exits")
