"""Driving the OCI runtime (runc, or crun where it works) and a container's lifecycle.

A container runs under a *monitor*: the ``pyunion run`` process itself in the foreground, or a
detached ``python -m unionfs.image.container.monitor`` for ``-d`` and ``start``. The monitor
mounts the rootfs, writes the bundle, runs ``runc run`` and waits, forwarding signals, then
records the exit status and unmounts. If the monitor dies, ``refresh`` asks the runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from unionfs.image.container import records, rootfs
from unionfs.image.container.bundle import image_config, write_bundle
from unionfs.image.container.records import Container
from unionfs.image.errors import ImageError
from unionfs.image.mounts import process_alive
from unionfs.image.store import Store

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


def runtime_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"the OCI runtime {name!r} is not installed (apt-get install {name})")
    return path


def runtime_command(store: Store, container: Container) -> list[str]:
    return [runtime_binary(container.spec.runtime), "--root", os.path.join(store.root,
                                                                           "runtime")]


def runtime_state(store: Store, container: Container) -> dict | None:
    """The runtime's view of the container, or None if it does not know it."""
    try:
        result = subprocess.run(runtime_command(store, container) + ["state", container.id],
                                capture_output=True, text=True, timeout=30)
    except (ImageError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(result.stdout)
    return None


def send_signal(store: Store, container: Container, signum: int) -> bool:
    result = subprocess.run(runtime_command(store, container)
                            + ["kill", container.id, str(signum)],
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0


def delete_runtime_state(store: Store, container: Container) -> None:
    with contextlib.suppress(ImageError, subprocess.TimeoutExpired):
        subprocess.run(runtime_command(store, container)
                       + ["delete", "--force", container.id], capture_output=True, timeout=30)


def pause(store: Store, container: Container, paused: bool) -> None:
    verb = "pause" if paused else "resume"
    result = subprocess.run(runtime_command(store, container) + [verb, container.id],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ImageError(f"cannot {verb} {container.name}: "
                         f"{result.stderr.strip() or 'the runtime refused'}")


def refresh(store: Store, container: Container) -> Container:
    """Corrects a 'running' record whose monitor is gone (crashed, killed)."""
    if container.state != "running" or process_alive(container.monitor_pid, b"unionfs",
                                                       b"pyunion"):
        return container
    state = runtime_state(store, container)
    if state is not None and state.get("status") in ("running", "paused", "created"):
        return container  # an orphan process, still running: stop/rm reach it via runc
    records.update(store, container.id, state="exited", finished=time.time(), pid=None,
                   monitor_pid=None,
                   exit_code=container.exit_code if container.exit_code is not None else -1)
    delete_runtime_state(store, container)
    return records.get(store, container.id)


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def execute(store: Store, container: Container, *, log_path: str | None = None) -> int:
    """Runs the container's process to its end under this process (the monitor)."""
    point = rootfs.mount(store, container)
    directory = records.container_dir(store, container.id)
    bundle = write_bundle(directory, container, point, image_config(store, container.image_id))
    if os.path.exists(os.path.join(store.root, "runtime", container.id)):
        delete_runtime_state(store, container)  # a stale state from a crashed run
    command = runtime_command(store, container) + ["run", "-b", bundle, container.id]
    records.update(store, container.id, state="running", started=time.time(), finished=None,
                   exit_code=None, monitor_pid=os.getpid())
    stdout = open(log_path, "ab") if log_path else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(command, stdin=None if not log_path else subprocess.DEVNULL,
                                stdout=stdout, stderr=stdout)
    except OSError as e:
        records.update(store, container.id, state="exited", exit_code=127,
                       finished=time.time(), monitor_pid=None)
        raise ImageError(f"cannot start the runtime: {e.strerror}") from None
    finally:
        if stdout is not None:
            stdout.close()
    records.update(store, container.id, pid=proc.pid)
    code = _wait_forwarding_signals(proc)
    records.update(store, container.id, state="exited", exit_code=code, finished=time.time(),
                   pid=None, monitor_pid=None)
    if os.path.exists(os.path.join(store.root, "runtime", container.id)):
        delete_runtime_state(store, container)  # runc run deletes it itself when it can
    with contextlib.suppress(ImageError):
        rootfs.unmount(store, records.get(store, container.id))
    return code


def _wait_forwarding_signals(proc: subprocess.Popen) -> int:
    """Waits for the runtime; signals sent to us reach it (and it passes them on)."""
    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {}
    for signum in FORWARDED_SIGNALS:
        with contextlib.suppress(ValueError):  # not in the main thread
            previous[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                return _exit_status(proc.wait())
            except KeyboardInterrupt:
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_detached(store: Store, container: Container) -> None:
    """Starts the container under a detached monitor; returns once it runs (or ended)."""
    directory = records.container_dir(store, container.id)
    log = os.path.join(directory, "container.log")
    # the previous run's "exited" must not be taken for this one's
    records.update(store, container.id, state="created", exit_code=None, finished=None)
    monitor_log = open(os.path.join(directory, "monitor.log"), "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unionfs.image.container.monitor", "--root", store.root,
             "--log", log, container.id],
            stdin=subprocess.DEVNULL, stdout=monitor_log, stderr=monitor_log,
            start_new_session=True)
    finally:
        monitor_log.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        current = records.get(store, container.id)
        if current.state == "exited" or (current.state == "running" and current.pid):
            return
        if proc.poll() is not None:
            current = records.get(store, container.id)
            if current.state != "exited":
                message = _tail(os.path.join(directory, "monitor.log"))
                raise ImageError(f"container {container.name} failed to start"
                                 + (f": {message}" if message else ""))
            return
        time.sleep(0.02)
    raise ImageError(f"container {container.name} did not start within 60 s")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("pyunion: error: ") if lines else ""


def stop(store: Store, container: Container, timeout: float) -> None:
    """SIGTERM (or the image's StopSignal), then SIGKILL after ``timeout`` seconds."""
    if container.state != "running":
        return
    send_signal(store, container, signal.SIGTERM)
    if not _wait_exited(store, container, timeout):
        send_signal(store, container, signal.SIGKILL)
        _wait_exited(store, container, 30)


def _wait_exited(store: Store, container: Container, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = refresh(store, records.get(store, container.id))
        if current.state != "running":
            return True
        time.sleep(0.05)
    return False


def wait(store: Store, container: Container) -> int:
    while True:
        current = refresh(store, records.get(store, container.id))
        if current.state != "running":
            return current.exit_code if current.exit_code is not None else -1
        time.sleep(0.1)
