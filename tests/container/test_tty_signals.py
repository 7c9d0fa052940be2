"""``run -it`` through a real pseudo-terminal, and signals sent to a foreground ``pyunion run``
reaching the container's process."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

import pytest

from tests.container.conftest import IMAGE, REPO_ROOT, clean_env, mounts_under, wait_for


def read_until(fd: int, needle: bytes, timeout: float, sofar: bytes = b"") -> bytes:
    """Reads the pty master until ``needle`` shows up (or EOF / timeout: then fails)."""
    buf = sofar
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout} s; the terminal showed {buf!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the slave side is closed
            chunk = b""
        if not chunk:
            raise AssertionError(f"terminal closed before {needle!r}; it showed {buf!r}")
        buf += chunk
    return buf


def drain(fd: int, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def test_interactive_tty(px):
    master, slave = os.openpty()
    try:
        # setsid -c: a new session whose controlling terminal is the pty (stdin)
        proc = px.track(subprocess.Popen(
            ["setsid", "-c", *px.command("run", "-it", "--rm", IMAGE, "sh")],
            stdin=slave, stdout=slave, stderr=slave, env=clean_env({"TERM": "xterm"}),
            cwd=REPO_ROOT, close_fds=True))
        os.close(slave)
        slave = -1
        shown = read_until(master, b"# ", timeout=30)  # the shell's prompt
        os.write(master, b"tty; echo hello-$((6*7)); exit 5\n")
        shown = read_until(master, b"hello-42", timeout=20, sofar=shown)
        shown += drain(master, 1.0)
        assert proc.wait(timeout=30) == 5, shown
        # the process had a terminal of its own
        assert b"/dev/pts/" in shown or b"/dev/console" in shown, shown
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert px("ps", "-aq").stdout == ""
    assert mounts_under(px.tmp) == []


def test_tty_requires_a_terminal(px):
    result = px("run", "-t", "--rm", IMAGE, "true", check=False)
    assert result.returncode == 1
    assert "TTY" in result.stderr


@pytest.mark.parametrize("signum,name,code", [(signal.SIGTERM, "TERM", 43),
                                              (signal.SIGINT, "INT", 42)])
def test_signal_to_foreground_run_reaches_the_container(px, workdir, signum, name, code):
    """A trap in the container's sh sees the signal sent to ``pyunion run``: it writes a file
    through a bind mount and exits with its own status, which becomes run's status."""
    script = (f"trap 'echo got-{name} > /out/signal; exit {code}' {name}; "
              "echo ready > /out/ready; sleep 300 & wait")
    run = px.popen("run", "--name", "fg", "-v", f"{workdir}:/out", IMAGE, "sh", "-c", script)
    wait_for(lambda: (workdir / "ready").exists() or run.proc.poll() is not None,
             timeout=30, what="the container to start")
    assert run.proc.poll() is None, run.stderr()
    os.kill(run.pid, signum)
    assert run.wait(timeout=30) == code, run.stderr()
    assert (workdir / "signal").read_text() == f"got-{name}\n"
    row = px.container("fg")
    assert row["State"] == "exited" and row["ExitCode"] == code, row
    assert mounts_under(px.tmp) == []  # run unmounted the rootfs after the process ended
