"""Crashes: the mount daemon of a mounted container SIGKILLed; a foreground ``pyunion run``
SIGKILLed while its container runs. pyunion must notice, never show a stale "Up", and clean up
(``rm -f``) without leaving a runc container, a process or a mount."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import time

import pytest

from tests.cli_helpers import pid_alive
from tests.container.conftest import IMAGE, mounts_under, pids_with_cmdline, wait_for


def mount_daemon_pid(px, name: str) -> int:
    upper = str(px.container_dir(name) / "upper")
    pids = pids_with_cmdline("mount_helper", upper)
    assert len(pids) == 1, f"mount daemons of {name}: {pids}"
    return pids[0]


def test_mount_daemon_killed(px):
    px("create", "--name", "web", IMAGE)
    point = px("mount", "web").stdout.strip()
    with open(os.path.join(point, "srv/written"), "w") as f:
        f.write("before the crash\n")
        f.flush()
        os.fsync(f.fileno())
    os.mkdir(os.path.join(point, "srv/dir-written"))
    fd = os.open(os.path.join(point, "srv"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    daemon = mount_daemon_pid(px, "web")
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not pid_alive(daemon), timeout=10, what="the daemon to die")

    # the store still answers
    assert px.containers()["web"]["State"] == "created"
    assert "web" in px("ps", "-a").stdout

    again = px("mount", "web").stdout.strip()
    assert again == point
    with open(os.path.join(again, "srv/written")) as f:
        assert f.read() == "before the crash\n"
    assert os.path.isdir(os.path.join(again, "srv/dir-written"))
    assert "A /srv/written" in px("diff", "web").stdout.splitlines()
    assert len([m for m in mounts_under(px.tmp) if m[0] == point]) == 1
    px("umount", "web")
    assert mounts_under(px.tmp) == []


def test_ps_does_not_report_a_dead_mount(px):
    px("create", "--name", "web", IMAGE)
    px("mount", "web")
    daemon = mount_daemon_pid(px, "web")
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not pid_alive(daemon), timeout=10, what="the daemon to die")
    row = px.containers()["web"]
    assert row["Mounts"] == "", f"ps reports the dead mount of web: {row}"


def test_mount_daemon_killed_under_a_running_container(px):
    """The rootfs of a running container loses its daemon: the container's process fails on
    its files; stop/rm still clean up."""
    px("run", "-d", "--name", "web", IMAGE, "sh", "-c", "echo ready; sleep 300")
    wait_for(lambda: "ready" in px("logs", "web").stdout, timeout=20, what="ready")
    daemon = mount_daemon_pid(px, "web")
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not pid_alive(daemon), timeout=10, what="the daemon to die")
    assert "web" in px("ps", "-a").stdout
    px("rm", "-f", "web", timeout=90)
    assert px("ps", "-aq").stdout == ""
    assert px.runc_containers() == []
    assert mounts_under(px.tmp) == []


def container_init_pid(px, name: str) -> int:
    state = wait_for(lambda: px.runc_state(px.container(name)["ID"]), timeout=20,
                     what=f"runc state of {name}")
    return state["pid"]


def test_foreground_run_killed(px):
    fg1 = px.popen("run", "--name", "orphan1", IMAGE, "sleep", "300")
    fg2 = px.popen("run", "--name", "orphan2", IMAGE, "sleep", "301")
    wait_for(lambda: len(px.runc_containers()) == 2, timeout=30, what="both containers")
    init1 = container_init_pid(px, "orphan1")
    init2 = container_init_pid(px, "orphan2")
    os.kill(fg1.pid, signal.SIGKILL)
    os.kill(fg2.pid, signal.SIGKILL)
    fg1.wait(timeout=10)
    fg2.wait(timeout=10)

    # the container processes live on: still "Up", and ps works
    rows = px.containers()
    assert rows["orphan1"]["State"] == rows["orphan2"]["State"] == "running", rows
    assert pid_alive(init1) and pid_alive(init2)

    # orphan2's process ends: ps must stop saying "Up" (no monitor is left to record it)
    os.kill(init2, signal.SIGKILL)
    wait_for(lambda: px.container("orphan2")["State"] != "running", timeout=20,
             what="orphan2 to be seen as exited")
    assert "Up" not in [line for line in px("ps", "-a").stdout.splitlines()
                        if line.rstrip().endswith("orphan2")][0]
    assert px("ps", "-q", "--no-trunc").stdout.split() == [rows["orphan1"]["ID"]]

    # orphan1 is killed by rm -f through the runtime: nothing remains
    px("rm", "-f", "orphan1", "orphan2", timeout=90)
    assert not pid_alive(init1)
    assert px("ps", "-aq").stdout == ""
    assert px.runc_containers() == []
    assert mounts_under(px.tmp) == []
    assert pids_with_cmdline(str(px.root)) == []


def _recorded_mountpoint(px, name: str) -> str | None:
    """The rootfs mount the store's record of ``name`` knows of (None: none)."""
    db = sqlite3.connect(f"file:{px.root / 'db.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT mountpoint FROM containers WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    assert row is not None, f"no record of {name}"
    return row[0]


def _kill_when_mounted(px, run, containers: str) -> bool:
    """SIGKILLs ``run`` as soon as a rootfs is mounted below ``containers`` (its mount daemon
    answering, the record not yet written, if we are quick enough); False if it ended first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(point.endswith("/merged") for point, _t, _s in mounts_under(containers)):
            os.kill(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
            return True
        if run.proc.poll() is not None:
            return False
    raise AssertionError(f"no rootfs was mounted within 30 s: {run.stderr()}")


def test_start_after_a_run_killed_while_mounting(px):
    """A ``run`` SIGKILLed while it mounted the rootfs leaves a mount its record does not know
    (the daemon lives on in its own session). ``start`` must take it over, not fail with "is
    already a mount point" until ``rm``. The kill must land between the mount and its record:
    tried again (with a new container) when it was too late."""
    containers = px.root / "containers"
    for attempt in range(60):
        name = f"killed{attempt}"
        run = px.popen("run", "--name", name, IMAGE, "true")
        if not _kill_when_mounted(px, run, str(containers)) \
                or _recorded_mountpoint(px, name) is not None:
            px("rm", "-f", name)
            continue
        assert px.container(name)["State"] == "created"
        started = px("start", name, check=False)
        assert started.returncode == 0, str(started)
        assert px("wait", name).stdout.split() == ["0"]
        assert px("start", "-a", name).returncode == 0  # and again, from a clean state
        px("rm", name)
        assert mounts_under(px.tmp) == []
        return
    pytest.fail("the kill never landed between the rootfs's mount and its record")


def test_a_session_waits_for_the_containers_lock(px):
    """While someone holds the container's lock (``session.lock`` in its directory, an
    flock), ``start -a`` mounts nothing; it goes on as soon as the lock is free."""
    px("create", "--name", "locked", IMAGE, "true")
    lock_path = px.container_dir("locked") / "session.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = px.popen("start", "-a", "locked")
        time.sleep(1.5)
        assert start.proc.poll() is None, start.stderr()
        assert mounts_under(px.container_dir("locked")) == []
        assert px.container("locked")["State"] == "created"
    finally:
        os.close(fd)  # the lock goes with it
    assert start.wait(timeout=60) == 0, start.stderr()
    assert px.container("locked")["State"] == "exited"
