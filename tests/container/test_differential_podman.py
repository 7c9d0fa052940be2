"""One scripted session of docker-style commands run with pyunion and with podman (4.3,
``--runtime runc``; a private store, configuration and registries file, nothing of the host's),
both pulling the same busybox image from a local registry; per command the exit status and
what it prints are compared: list columns and template output, inspect fields, and the bytes
``exec``, ``cp`` and ``logs`` give.

Where the two differ by design the step says so (``same=False``: only pyunion's is checked).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_helpers import run_through_files
from tests.container.conftest import IMAGE, REPO_ROOT, Pyunion, _teardown, mounts_under
from tests.container.test_pull_on_demand_and_exit_codes import push
from tests.registry.conftest import Registry, isolated_env

pytestmark = pytest.mark.timeout(400)  # podman is in the Makefile's TEST_PACKAGES

NETWORK_RUN_DIRS = (Path("/run/containers/networks"), Path("/run/containers"))


class Podman:
    """podman with everything of its own below a short temporary directory (a long graphroot
    keeps ``podman run`` from attaching): vfs storage, the host's network, runc, cgroupfs,
    events to a file, the test registry as an insecure one."""

    def __init__(self, registry: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pyu-pd-", dir="/tmp"))
        self._made = [d for d in NETWORK_RUN_DIRS if not d.exists()]
        b = self.base
        (b / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{b}/g"\nrunroot = "{b}/r"\n')
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        (b / "containers.conf").write_text(
            '[containers]\nnetns = "host"\n'
            # podman's default limits (1048576) need CAP_SYS_RESOURCE: the caller's instead
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
            f'events_logger = "file"\nevents_logfile_path = "{b}/events.log"\n'
            f'tmp_dir = "{b}/t"\n[network]\nnetwork_config_dir = "{b}/n"\n')
        (b / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
        self.env = {**os.environ, "CONTAINERS_CONF": f"{b}/containers.conf",
                    "CONTAINERS_STORAGE_CONF": f"{b}/storage.conf",
                    "CONTAINERS_REGISTRIES_CONF": f"{b}/registries.conf",
                    "XDG_CONFIG_HOME": f"{b}/config", "XDG_RUNTIME_DIR": f"{b}/xdg"}

    def command(self, *args: str) -> list[str]:
        b = self.base
        return ["podman", "--root", f"{b}/g", "--runroot", f"{b}/r", "--storage-driver", "vfs",
                "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend",
                "file", *args]

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(self.command("rm", "-a", "-f", "-t", "0"), env=self.env,
                           capture_output=True, timeout=120)
        for point, _, _ in mounts_under(self.base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        for d in self._made:
            with contextlib.suppress(OSError):
                d.rmdir()


@dataclass
class Outcome:
    status: int
    stdout: bytes
    stderr: bytes


@pytest.fixture
def tools(tmp_path, base_tar) -> Iterator[tuple[Pyunion, Podman, str]]:
    env = isolated_env(tmp_path / "env")
    source = Pyunion(tmp_path / "source", tmp_path)
    source.root.mkdir()
    store = Pyunion(tmp_path / "store", tmp_path)
    store.root.mkdir()
    registry = Registry(tmp_path / "registry")
    podman = None
    try:
        registry.start()
        source("load", "-q", "-i", base_tar)
        image = registry.ref("library/busybox:1.35")
        push(source, IMAGE, image, env)
        podman = Podman(registry.host)
        yield store, podman, image
    finally:
        if podman is not None:
            podman.close()
        registry.stop()
        leftovers = _teardown(store) + _teardown(source)
    assert not leftovers, leftovers


def _run(command: list[str], env: dict[str, str] | None, input: bytes | None) -> Outcome:
    status, out, err = run_through_files(command, timeout=120, input=input, env=env,
                                         cwd=REPO_ROOT, start_new_session=True)
    return Outcome(status, out, err)


def _columns(header: bytes) -> list[str]:
    return re.split(r"\s{2,}", header.decode().strip())


def test_session_against_podman(tools, tmp_path):
    px, podman, image = tools
    pyunion_env = isolated_env(tmp_path / "px-env")
    work = {"pyunion": tmp_path / "px-out", "podman": tmp_path / "pd-out"}
    for d in work.values():
        d.mkdir()
    failures: list[str] = []

    def both(*args: str, same: bool = True, stdout: bool = True, input: bytes | None = None,
             status: int | None = None, compare=None,
             same_status: bool = True) -> dict[str, Outcome]:
        """Runs one command in both; compares status (and stdout, or ``compare``'s view)."""
        def fill(tool: str) -> list[str]:
            return [a.replace("{OUT}", str(work[tool])).replace("{TOOL}", tool)
                    for a in args]

        got = {"pyunion": _run(px.command(*fill("pyunion")), {**pyunion_env}, input),
               "podman": _run(podman.command(*fill("podman")), podman.env, input)}
        p, d = got["pyunion"], got["podman"]
        what = " ".join(args)
        if status is not None and p.status != status:
            failures.append(f"{what}: pyunion exited {p.status}, expected {status}: "
                            f"{p.stderr.decode(errors='replace').strip()}")
        if same and same_status and p.status != d.status:
            failures.append(f"{what}: exit status pyunion {p.status} != podman {d.status}\n"
                            f"  pyunion: {p.stderr.decode(errors='replace').strip()}\n"
                            f"  podman: {d.stderr.decode(errors='replace').strip()}")
        if same and stdout:
            view = compare or (lambda o: o.stdout)
            if view(p) != view(d):
                failures.append(f"{what}: output differs\n  pyunion: {view(p)!r}\n"
                                f"  podman: {view(d)!r}")
        return got

    began = str(int(time.time()) - 1)
    both("pull", "-q", image, stdout=False, status=0)
    # usage errors: 125 for every command
    both("ps", "--bogus", stdout=False, status=125)
    both("logs", "--tail", "x", "web", stdout=False, status=125)
    both("images", "--format", "{{.Repository}}:{{.Tag}}", status=0,
         compare=lambda o: sorted(o.stdout.split()))
    both("images", compare=lambda o: _columns(o.stdout.splitlines()[0]))
    both("images", "--filter", "reference=*busybox*", "--format", "{{.Tag}}")
    # podman's spellings: --tls-verify=false, push SOURCE DESTINATION
    host = image.split("/")[0]
    both("push", "-q", "--tls-verify=false", image, f"{host}/copy-{{TOOL}}:1", stdout=False,
         status=0)
    both("pull", "-q", "--tls-verify=false", f"{host}/copy-pyunion:1", stdout=False, status=0)
    both("pull", "-q", "--tls-verify=false", f"{host}/copy-podman:1", stdout=False, status=0)
    both("images", "--format", "{{.Repository}}:{{.Tag}}",
         compare=lambda o: sorted(o.stdout.split()))
    both("run", "--rm", f"{host}/copy-podman:1", "cat", "/srv/tree/y/z", status=0)
    # pull -a: every tag of the repository; search HOST/TERM: that registry's catalog
    both("push", "-q", "--tls-verify=false", image, f"{host}/library/busybox:extra",
         stdout=False, status=0)
    both("pull", "-q", "--all-tags", f"{host}/library/busybox", stdout=False, status=0)
    both("images", "--format", "{{.Repository}}:{{.Tag}}",
         compare=lambda o: sorted(o.stdout.split()))
    both("search", f"{host}/copy", status=0,
         compare=lambda o: [line.split()[0] for line in o.stdout.splitlines()])
    # run: output, the process's status, docker's 125/126/127
    both("run", "--rm", image, "echo", "hello", status=0)
    both("run", "--rm", "-e", "X=from-e", "-w", "/srv", image, "sh", "-c", "echo $X; pwd")
    both("run", "--rm", image, "sh", "-c", "exit 3", status=3)
    both("run", "--rm", image, "no-such-command", stdout=False, status=127)
    both("run", "--rm", image, "/etc/passwd", stdout=False, status=126)
    both("run", "--rm", "UPPER//bad", "true", stdout=False, status=125)
    both("run", "--rm", "-u", "1000", image, "id", "-u")
    both("run", "--rm", "--add-host", "db:10.9.8.7", image, "grep", "db", "/etc/hosts",
         compare=lambda o: o.stdout.split())
    # a detached container: logs, exec, cp, ps, inspect, pause, kill, rename, restart
    both("run", "-d", "--name", "web", image, "sh", "-c",
         "echo err >&2; sleep 0.3; echo out; printf 'two\\nthree\\n'; sleep 300",
         compare=lambda o: bool(re.fullmatch(rb"[0-9a-f]{64}\n", o.stdout)), status=0)
    both("exec", "web", "sleep", "0.8")  # its output is written by then
    for args in (["logs", "web"], ["logs", "--tail", "2", "web"]):
        both(*args, compare=lambda o: (o.stdout, o.stderr))
    both("logs", "-t", "web", compare=lambda o: [
        bool(re.match(rb"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d) ", line))
        for line in o.stdout.splitlines()])
    both("exec", "web", "echo", "hi", status=0)
    both("exec", "web", "sh", "-c", "exit 5", status=5)
    both("exec", "-e", "Y=1", "-w", "/tmp", "web", "sh", "-c", "echo $Y; pwd")
    both("exec", "-u", "app", "web", "id")
    both("exec", "-i", "web", "cat", input=b"through stdin\n")
    both("exec", "web", "no-such-command", stdout=False, status=127)
    both("exec", "nosuch", "true", stdout=False)
    both("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "web", status=0)
    both("cp", "web:/srv/lower/a.txt", "{OUT}/a.txt", status=0)
    both("cp", "web:/srv/tree", "{OUT}", status=0)
    both("cp", "{OUT}/a.txt", "web:/tmp/copied", status=0)
    both("exec", "web", "cat", "/tmp/copied")
    both("cp", "web:/srv/links", "-", compare=lambda o: sorted(
        (m.name, m.type, m.mode, m.linkname) for m in
        tarfile.open(fileobj=io.BytesIO(o.stdout)).getmembers()))
    # (podman 4.3's {{.State}} is its status text; docker's and pyunion's the state word)
    both("ps", "--format", "{{.Names}} {{.Image}}")
    both("ps", compare=lambda o: _columns(o.stdout.splitlines()[0]))
    both("inspect", "-f", "{{.State.Status}} {{.State.Running}} {{.Path}} {{.Args}} "
         "{{.Config.Image}}", "web")
    both("pause", "web", status=0)
    both("inspect", "-f", "{{.State.Status}} {{.State.Paused}}", "web")
    both("unpause", "web", status=0)
    both("top", "web", stdout=False, status=0)
    both("rename", "web", "web2", stdout=False, status=0)
    # events: podman 4.3 records them, but its reader of the events file stops at the "push"
    # event the session's push wrote (a status it cannot parse back), listing nothing after
    # it; so only pyunion's is checked here (test_system_events_stats_attach has the rest)
    seen = both("events", "--since", began, "--until", str(int(time.time()) + 1), "--filter",
                "container=web", "--filter", "event=start", "--format", "{{.Status}}",
                status=0, same=False)["pyunion"].stdout
    if seen != b"start\n":
        failures.append(f"events of web: {seen!r}")
    both("restart", "-t", "1", "web2", stdout=False, status=0)
    both("kill", "web2", stdout=False, status=0)
    both("wait", "web2", status=0)
    both("ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}")
    both("ps", "-a", "--filter", "exited=137", "--format", "{{.Names}}")
    both("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "web2")
    both("start", "web2", stdout=False, status=0)
    both("stop", "-t", "1", "web2", stdout=False, status=0)
    both("rm", "web2", stdout=False, status=0)
    both("rm", "web2", stdout=False, status=1)
    both("ps", "-a", "--format", "{{.Names}}")
    # attach: output from then on, the exit status; stdin of a -i container (the sleep: long
    # enough for each tool's attach to begin before the output, on a loaded machine too)
    both("run", "-d", "--name", "late", image, "sh", "-c", "sleep 6; echo late; exit 4",
         stdout=False, status=0)
    # (podman 4.3's attach exits 0 and ends with an empty line; docker's exits with the
    # container's status, as pyunion's)
    both("attach", "late", status=4, same_status=False,
         compare=lambda o: o.stdout.rstrip(b"\n"))
    both("run", "-d", "-i", "--name", "reader", image, "sh", "-c", "read a; echo got $a",
         stdout=False, status=0)
    both("attach", "reader", input=b"hello\n", status=0,
         compare=lambda o: o.stdout.rstrip(b"\n"))
    # system df (podman counts an image per name, docker and pyunion per id) and prune
    both("system", "df", status=0, compare=lambda o: [
        re.split(r"\s{2,}", line)[:3] for line in o.stdout.decode().splitlines()[:4]
        if not line.startswith("Images")])
    both("system", "prune", "-f", stdout=False, status=0)
    both("ps", "-a", "--format", "{{.Names}}")
    both("system", "prune", "-a", "-f", stdout=False, status=0)
    both("images", "-q")
    assert not failures, f"{len(failures)} differences:\n" + "\n".join(failures)
    # the files cp wrote, byte for byte, modes too
    for rel in ("a.txt", "tree/x", "tree/y/z"):
        a, b = work["pyunion"] / rel, work["podman"] / rel
        assert a.read_bytes() == b.read_bytes(), rel
        assert os.stat(a).st_mode == os.stat(b).st_mode, rel
