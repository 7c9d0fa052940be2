"""``run`` options: --env-file, --label, --add-host, --init, --cap-add/--cap-drop,
--privileged, --restart, -m/--memory, --cpus, each seen from inside the container (its
/proc/self/status, /etc/hosts, pid 1) or from runc and the cgroup it made."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.container.conftest import IMAGE, wait_for

pytestmark = pytest.mark.timeout(180)

CAP_CHOWN, CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN = 0, 13, 12, 21


def cgroup_value(pid: int, controller: str, v1_file: str, v2_file: str) -> str:
    """A cgroup setting of a process, read on the host (v1 or v2)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                with open(f"/sys/fs/cgroup/{controller}{path}/{v1_file}") as g:
                    return g.read().strip()
            if controllers == "" and os.path.exists(f"/sys/fs/cgroup{path}/{v2_file}"):
                with open(f"/sys/fs/cgroup{path}/{v2_file}") as g:
                    return g.read().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


def effective_caps(px, *options) -> int:
    status = px("run", "--rm", *options, IMAGE, "cat", "/proc/self/status").stdout
    line = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    return int(line.split()[1], 16)


def test_env_file_label_add_host_init(px, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\n\nFROM_FILE=1\nBOTH=file\nFROM_CALLER\n")
    out = px("run", "--rm", "--env-file", env_file, "-e", "BOTH=flag", IMAGE, "env",
             env={"FROM_CALLER": "here"}).stdout.splitlines()
    assert {"FROM_FILE=1", "BOTH=flag", "FROM_CALLER=here"} <= set(out), out
    assert px("run", "--rm", "--env-file", tmp_path / "nope", IMAGE, "true",
              check=False).returncode == 125
    hosts = px("run", "--rm", "--add-host", "db.local:10.1.2.3", "--add-host", "v6:[::1]",
               IMAGE, "cat", "/etc/hosts").stdout
    assert "10.1.2.3\tdb.local\n" in hosts and "::1\tv6\n" in hosts, hosts
    assert px("run", "--rm", "--add-host", "x:not-an-ip", IMAGE, "true",
              check=False).returncode == 125
    # -p with the host's network: discarded with docker's warning; refused with none
    published = px("run", "--rm", "-p", "8080:80", IMAGE, "true")
    assert "published ports are discarded" in published.stderr
    assert px("run", "--rm", "-p", "8080:80", "--network", "none", IMAGE, "true",
              check=False).returncode == 125
    # --init: catatonit is pid 1, the command its child; without it the command is pid 1
    probe = ("sh", "-c", "cat /proc/1/comm; grep PPid /proc/$$/status")
    assert px("run", "--rm", "--init", IMAGE, *probe).stdout.split() == [
        "docker-init", "PPid:", "1"]
    assert px("run", "--rm", IMAGE, *probe).stdout.split() == ["sh", "PPid:", "0"]
    # labels: in inspect and for ps --filter; init shows in no diff
    px("create", "--name", "labelled", "--init", "-l", "tier=web", "--label", "flag", IMAGE)
    labels = json.loads(px("inspect", "labelled").stdout)[0]["Config"]["Labels"]
    assert labels == {"tier": "web", "flag": ""}
    assert px("ps", "-aq", "--filter", "label=tier=web").stdout.strip() != ""
    assert px("ps", "-aq", "--filter", "label=tier=db").stdout == ""
    px("start", "-a", "labelled")
    assert px("diff", "labelled").stdout == ""


def test_capabilities_and_privileged(px):
    default = effective_caps(px)
    assert default & (1 << CAP_CHOWN) and not default & (1 << CAP_NET_ADMIN)
    dropped = effective_caps(px, "--cap-drop", "chown", "--cap-add", "NET_ADMIN")
    assert not dropped & (1 << CAP_CHOWN) and dropped & (1 << CAP_NET_ADMIN)
    assert effective_caps(px, "--cap-drop", "ALL") == 0
    assert effective_caps(px, "--cap-drop", "ALL", "--cap-add", "CAP_NET_RAW") \
        == 1 << CAP_NET_RAW
    privileged = effective_caps(px, "--privileged")
    assert privileged & (1 << CAP_SYS_ADMIN)
    # no masked /proc paths and a writable /sys with --privileged
    masked = px("run", "--rm", IMAGE, "cat", "/proc/keys", check=False)
    assert masked.stdout == ""
    mounts = px("run", "--rm", "--privileged", IMAGE, "grep", " /sys ", "/proc/mounts").stdout
    assert " rw," in mounts, mounts
    bad = px("run", "--rm", "--cap-add", "NOT_A_CAP", IMAGE, "true", check=False)
    assert bad.returncode == 125 and "unknown capability CAP_NOT_A_CAP" in bad.stderr


def test_memory_and_cpus(px):
    px("run", "-d", "--name", "limited", "-m", "64m", "--cpus", "0.5", IMAGE, "sleep", "300")
    state = px.runc_state(px.container("limited")["ID"])
    assert state is not None
    assert cgroup_value(state["pid"], "memory", "memory.limit_in_bytes", "memory.max") \
        == "67108864"
    quota = cgroup_value(state["pid"], "cpu", "cpu.cfs_quota_us", "cpu.max")
    assert quota in ("50000", "50000 100000"), quota
    px("rm", "-f", "limited")
    # never more than the caller has
    too_many = px("run", "--rm", "--cpus", str(len(os.sched_getaffinity(0)) + 1), IMAGE,
                  "true", check=False)
    assert too_many.returncode == 125 and "the CPUs the caller has" in too_many.stderr
    too_much = px("run", "--rm", "-m", "100000g", IMAGE, "true", check=False)
    assert too_much.returncode == 125 and "caller's own limit" in too_much.stderr
    assert px("run", "--rm", "-m", "lots", IMAGE, "true", check=False).returncode == 125


def test_restart_policies(px):
    # on-failure:2: two restarts, then it stays exited
    px("run", "-d", "--name", "flaky", "--restart", "on-failure:2", IMAGE, "sh", "-c",
       "echo ran; exit 3")
    wait_for(lambda: px("logs", "flaky").stdout == "ran\n" * 3, timeout=30, what="3 runs")
    wait_for(lambda: px.container("flaky")["State"] == "exited"
             and json.loads(px("inspect", "flaky").stdout)[0]["RestartCount"] == 2,
             timeout=30, what="the end of the restarts")
    assert px.container("flaky")["ExitCode"] == 3
    # a success is not restarted under on-failure
    px("run", "-d", "--name", "fine", "--restart", "on-failure", IMAGE, "echo", "once")
    assert px("wait", "fine").stdout == "0\n"
    # always: again after it exits, until stopped by the user
    px("run", "-d", "--name", "loop", "--restart", "always", IMAGE, "sh", "-c",
       "echo tick; sleep 0.2")
    wait_for(lambda: px("logs", "loop").stdout.count("tick") >= 3, timeout=30, what="ticks")
    px("stop", "-t", "2", "loop")
    wait_for(lambda: px.container("loop")["State"] == "exited", timeout=30, what="the stop")
    ticks = px("logs", "loop").stdout.count("tick")
    time.sleep(1.5)
    assert px("logs", "loop").stdout.count("tick") == ticks
    assert px.container("loop")["State"] == "exited"
    assert px("run", "--rm", "--restart", "always", IMAGE, "true", check=False).returncode \
        == 125
    assert px("run", "--restart", "sometimes", IMAGE, "true", check=False).returncode == 125
