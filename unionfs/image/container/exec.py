"""Running another process in a running container (``pyunion exec``): ``runc exec`` with a
process of the container's own config (its capabilities, rlimits, environment), the command,
user, directory and terminal changed, so that it joins the container's namespaces and cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field

from unionfs.image.container import records, runtime, session
from unionfs.image.container.bundle import process_user
from unionfs.image.container.records import Container
from unionfs.image.container.runtime_output import StderrRelay, start_failure
from unionfs.image.errors import Conflict, ImageError, StartFailed
from unionfs.image.store import Store


@dataclass
class ExecSpec:
    command: list[str]
    env: list[str] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    tty: bool = False
    interactive: bool = False
    detach: bool = False


def exec_process(store: Store, container: Container, spec: ExecSpec) -> int:
    """Runs ``spec.command`` in the container: its exit status (0 at once if detached).
    StartFailed (126/127 where docker has them) if the runtime could not start it."""
    container = session.refresh(store, container)
    if container.state != "running":
        raise Conflict(f"container {container.name} is not running")
    if runtime.is_paused(store, container):
        raise Conflict(f"container {container.name} is paused: unpause it first")
    if spec.detach and spec.tty:
        raise ImageError("exec -d with -t is not supported (a detached terminal needs a "
                         "console socket): drop -t")
    directory = records.container_dir(store, container.id)
    token = secrets.token_hex(6)
    process_file = os.path.join(directory, f"exec-{token}.json")
    log = os.path.join(directory, f"exec-{token}.log")
    with open(os.path.join(directory, "bundle", "config.json")) as f:
        process = _process(json.load(f)["process"], container, spec)
    with open(process_file, "w") as f:
        json.dump(process, f)
    command = runtime.runtime_command(store, container) + [
        "--log", log, "--log-format", "json", "exec", "--process", process_file,
        *(["--detach"] if spec.detach else []), container.id]
    try:
        return _run(command, spec, log, container)
    finally:
        for path in (process_file, log):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _process(base: dict, container: Container, spec: ExecSpec) -> dict:
    process = dict(base)
    process["args"] = list(spec.command)
    process["terminal"] = spec.tty
    process["env"] = merged_env(base.get("env") or [], spec.env, spec.tty)
    if spec.user is not None:
        assert container.mountpoint is not None
        process["user"] = process_user(container.mountpoint, spec.user)
    if spec.workdir is not None:
        if not os.path.isabs(spec.workdir):
            raise ImageError(f"the working directory {spec.workdir!r} is not absolute")
        process["cwd"] = spec.workdir
    process.pop("consoleSize", None)
    return process


def merged_env(base: list[str], extra: list[str], tty: bool) -> list[str]:
    """The container's environment with ``-e`` items over it (``KEY`` alone: the caller's)."""
    env = dict(item.partition("=")[::2] for item in base)
    for item in extra:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    if tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return [f"{k}={v}" for k, v in env.items()]


def _run(command: list[str], spec: ExecSpec, log: str, container: Container) -> int:
    read_end, write_end = os.pipe()
    stdin = None if spec.interactive or spec.tty else subprocess.DEVNULL
    output = subprocess.DEVNULL if spec.detach else None
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL if spec.detach else stdin,
                                stdout=output, stderr=write_end)
    except OSError as e:
        os.close(read_end)
        raise StartFailed(f"cannot start the runtime: {e.strerror}") from None
    finally:
        os.close(write_end)
    relay = StderrRelay(read_end, 2, log)
    code = runtime.wait_forwarding_signals(proc)
    error = relay.finish()
    if error is not None:
        raise start_failure(container.spec.runtime, error.removeprefix("exec failed: "))
    return code
