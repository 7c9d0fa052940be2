"""Talking to the OCI runtime binary (runc, or crun where it works): its command lines, its
state of a container, signals, pause/resume, delete. A container's session (mount, network,
bundle, records, the run itself) is session.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess

from unionfs.image.container import records
from unionfs.image.container.records import Container
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
RUNTIME_LOG = "runtime.log"  # the runtime's own messages (JSON lines), per run
PID_FILE = "runtime.pid"     # written by the runtime once the process has started


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
    """``RUNTIME delete --force``, unless the runtime keeps no state for the container (its
    directory under ``--root``, as runc and crun keep it): ``run`` deletes its container as it
    ends, and a runtime process less is worth ~10 ms of every ``run --rm``."""
    if not os.path.lexists(os.path.join(store.root, "runtime", container.id)):
        return
    with contextlib.suppress(ImageError, subprocess.TimeoutExpired):
        subprocess.run(runtime_command(store, container)
                       + ["delete", "--force", container.id], capture_output=True, timeout=30)


PAUSED_MARK = "paused"  # in the container's directory while its processes are frozen


def pause(store: Store, container: Container, paused: bool) -> None:
    verb = "pause" if paused else "resume"
    result = subprocess.run(runtime_command(store, container) + [verb, container.id],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ImageError(f"cannot {verb} {container.name}: "
                         f"{_runtime_message(result.stderr) or 'the runtime refused'}")
    mark = os.path.join(records.container_dir(store, container.id), PAUSED_MARK)
    if paused:
        open(mark, "w").close()
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mark)


def clear_paused(store: Store, container: Container) -> None:
    """A new run of the container is not paused (its previous run may have been)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(records.container_dir(store, container.id), PAUSED_MARK))


def is_paused(store: Store, container: Container) -> bool:
    """Frozen by ``pause`` (a mark the next run of the container clears)."""
    return container.state == "running" and os.path.exists(
        os.path.join(records.container_dir(store, container.id), PAUSED_MARK))


def thaw(store: Store, container: Container) -> None:
    """Resumes a paused container (so that a signal just sent reaches its processes)."""
    if is_paused(store, container):
        with contextlib.suppress(ImageError):
            pause(store, container, False)


def _runtime_message(stderr: str) -> str:
    """The ``msg`` of runc's last ``level=error`` line, or its last line as it is."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    match = re.search(r'msg="((?:[^"\\]|\\.)*)"', lines[-1])
    return match.group(1).replace('\\"', '"') if match else lines[-1]


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_command(store: Store, container: Container, bundle: str, *, log: str,
                pid_file: str) -> list[str]:
    """``RUNTIME run`` of the bundle: its own messages to ``log`` (JSON lines), the process's
    pid to ``pid_file`` once it has started."""
    return runtime_command(store, container) + [
        "--log", log, "--log-format", "json",
        "run", "--pid-file", pid_file, "-b", bundle, container.id]


def wait_forwarding_signals(proc: subprocess.Popen) -> int:
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
