"""``exec`` (into a running container's namespaces through ``runc exec``), ``kill``,
``restart``, ``pause``/``unpause``, ``rename``, ``top``, ``port``, and a command's own usage
for an option it does not know. Real runc, real pyunion mounts."""

from __future__ import annotations

import os
import pty
import select
import subprocess

import pytest

from tests.container.conftest import IMAGE, REPO_ROOT, clean_env, wait_for

pytestmark = pytest.mark.timeout(180)

SLEEPER = ("sh", "-c", "echo up; trap 'exit 0' TERM; sleep 300 & wait")


def test_exec_options_and_exit_status(px):
    px("run", "-d", "--name", "box", "-e", "FROM_RUN=1", IMAGE, *SLEEPER)
    # the container's namespaces: its pid 1 is its own process, its hostname, its files
    assert px("exec", "box", "cat", "/proc/1/cmdline").stdout.startswith("sh\0-c")
    px("exec", "box", "sh", "-c", "echo made > /tmp/by-exec")
    assert px("exec", "box", "cat", "/tmp/by-exec").stdout == "made\n"
    # its environment and working directory, then -e, -w, -u over them
    env = px("exec", "-e", "X=1", "box", "env").stdout.splitlines()
    assert {"FOO=bar", "FROM_RUN=1", "X=1"} <= set(env), env
    assert px("exec", "box", "pwd").stdout == "/work\n"
    assert px("exec", "-w", "/srv", "box", "pwd").stdout == "/srv\n"
    assert px("exec", "-u", "app", "box", "id").stdout.startswith("uid=1000(app) gid=1000(app)")
    assert px("exec", "-u", "1000:0", "box", "id").stdout.startswith("uid=1000(app) gid=0(root)")
    # the exit status passes through; exec's own failures are 125, 126, 127
    assert px("exec", "box", "sh", "-c", "exit 7", check=False).returncode == 7
    missing = px("exec", "box", "no-such-command", check=False)
    assert missing.returncode == 127 and missing.stderr.count("\n") == 1, missing
    assert missing.stderr.startswith("pyunion: error: "), missing
    cannot = px("exec", "box", "/etc/passwd", check=False)
    assert cannot.returncode == 126 and cannot.stderr.count("\n") == 1, cannot
    nouser = px("exec", "-u", "nobody", "box", "id", check=False)
    assert nouser.returncode == 125 and "unable to find user nobody" in nouser.stderr
    # -i passes stdin on; without it the command reads nothing
    assert px("exec", "-i", "box", "cat", input="to stdin\n").stdout == "to stdin\n"
    assert px("exec", "box", "cat", input="to stdin\n").stdout == ""
    # -d: started, not waited for
    px("exec", "-d", "box", "sh", "-c", "sleep 0.3; echo later > /tmp/detached")
    wait_for(lambda: px("exec", "box", "cat", "/tmp/detached", check=False).stdout
             == "later\n", timeout=20, what="the detached exec")
    # a stopped container
    px("stop", "-t", "5", "box")
    stopped = px("exec", "box", "true", check=False)
    assert stopped.returncode == 125 and "is not running" in stopped.stderr, stopped
    assert px("exec", "nope", "true", check=False).returncode == 125


def test_exec_with_a_terminal(px):
    px("run", "-d", "--name", "box", IMAGE, *SLEEPER)
    # not a terminal: refused, as docker's client does
    refused = px("exec", "-t", "box", "true", check=False)
    assert refused.returncode == 1 and "not a TTY" in refused.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the child: pyunion exec -it on a terminal
        os.chdir(REPO_ROOT)
        os.execvpe(px.command("exec", "-it", "box", "sh", "-c",
                              "test -t 0 && test -t 1 && echo tty-yes; exit 3")[0],
                   px.command("exec", "-it", "box", "sh", "-c",
                              "test -t 0 && test -t 1 && echo tty-yes; exit 3"), clean_env())
    output = b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"tty-yes" in output, output
    assert os.waitstatus_to_exitcode(status) == 3


def test_kill_pause_restart_rename_top_port(px):
    px("run", "-d", "--name", "box", IMAGE, *SLEEPER)
    # top: the host's ps rows of the container's processes (sh and its sleep)
    top = px("top", "box").stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"] and len(top) == 3, top
    assert any("sleep 300" in row for row in top[1:]), top
    comms = [row.split()[1] for row in px("top", "box", "-o", "pid,comm").stdout.splitlines()[1:]]
    assert sorted(comms) == ["sh", "sleep"], comms
    assert px("port", "box").stdout == ""
    # pause: frozen (a write by exec is refused), shown in ps; unpause thaws
    px("pause", "box")
    assert "(Paused)" in px("ps").stdout
    assert px("pause", "box", check=False).returncode == 1
    assert px("exec", "box", "true", check=False).returncode == 125
    state = px.runc_state(px.container("box")["ID"])
    assert state and state["status"] == "paused", state
    px("unpause", "box")
    assert "(Paused)" not in px("ps").stdout
    px("exec", "box", "true")
    # rename: the same container under its new name; a taken or bad name is refused
    px("create", "--name", "other", IMAGE)
    assert px("rename", "box", "other", check=False).returncode == 1
    assert px("rename", "box", "bad/name", check=False).returncode == 1
    px("rename", "box", "renamed")
    assert px.container("renamed")["State"] == "running"
    # restart: a new run of the same command (its log line twice)
    px("restart", "-t", "5", "renamed")
    wait_for(lambda: px("logs", "renamed").stdout.count("up\n") == 2, timeout=20,
             what="the second run's output")
    assert px.container("renamed")["State"] == "running"
    # kill: SIGTERM by name is trapped (exit 0); the default KILL gives 137
    px("kill", "-s", "TERM", "renamed")
    assert px("wait", "renamed").stdout == "0\n"
    assert px("kill", "renamed", check=False).returncode == 1  # not running
    px("start", "renamed")
    px("kill", "renamed")
    assert px("wait", "renamed").stdout == "137\n"
    assert px("kill", "-s", "NOSUCH", "renamed", check=False).returncode == 1


def test_unknown_option_prints_the_commands_usage(px):
    for args, usage in ((["logs", "--bogus", "x"], "usage: pyunion logs"),
                        (["ps", "--bogus"], "usage: pyunion ps"),
                        (["image", "ls", "--bogus"], "usage: pyunion image ls"),
                        (["container", "rm", "--bogus", "x"], "usage: pyunion container rm")):
        result = px(*args, check=False)
        assert result.returncode == 125, result  # docker's and podman's
        assert result.stderr.startswith(usage), result
        assert "unrecognized arguments: --bogus" in result.stderr, result
    assert px("run", "--bogus", IMAGE, check=False).returncode == 125


def test_version(px):
    version = subprocess.run(px.command("--version"), capture_output=True, text=True,
                             cwd=REPO_ROOT, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("pyunion version "), version
    assert "Version:" in px("version").stdout
