"""Driving the OCI runtime (runc, or crun where it works) and a container's lifecycle.

A container runs under a *monitor*: the ``pyunion run`` process itself in the foreground, or a
detached ``python -m unionfs.image.container.monitor`` for ``-d`` and ``start``. The monitor
mounts the rootfs, writes the bundle, runs ``runc run`` and waits, forwarding signals, then
records the exit status and unmounts. If the monitor dies, ``refresh`` asks the runtime.

When the runtime cannot start the process (its command is missing or not executable, a mount
fails), ``execute`` raises ``StartFailed`` with the runtime's message as one line (see
runtime_output); the container is recorded as exited with docker's status for it.
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
import threading
import time
from collections.abc import Callable
from typing import Any

from unionfs.image import events
from unionfs.image.container import logs, network, records, restart, rootfs, slirp
from unionfs.image.container.bundle import image_config, write_bundle
from unionfs.image.container.records import Container
from unionfs.image.container.runtime_output import StderrRelay, start_failure
from unionfs.image.daemons import process_alive
from unionfs.image.errors import ImageError, StartFailed
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


def refresh(store: Store, container: Container) -> Container:
    """Corrects a 'running' record whose monitor is gone (crashed, killed); tears down the
    network a killed ``run`` set up before its container started."""
    if container.state != "running":
        if os.path.exists(os.path.join(records.container_dir(store, container.id),
                                       network.STATE_FILE)) \
                and network.orphaned(store, container.id):
            detach_network(store, container)
        return container
    if process_alive(container.monitor_pid, b"unionfs", b"pyunion"):
        return container
    state = runtime_state(store, container)
    if state is not None and state.get("status") in ("running", "paused", "created"):
        return container  # an orphan process, still running: stop/rm reach it via runc
    records.update(store, container.id, state="exited", finished=time.time(), pid=None,
                   monitor_pid=None,
                   exit_code=container.exit_code if container.exit_code is not None else -1)
    delete_runtime_state(store, container)
    detach_network(store, container)
    return records.get(store, container.id)


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def execute(store: Store, container: Container, *, log_path: str | None = None) -> int:
    """Runs the container's process to its end under this process (the monitor); its exit
    status. StartFailed if the runtime could not start it."""
    point, attached = _mount_and_attach(store, container)
    try:
        return _execute(store, container, point, attached, log_path)
    finally:
        detach_network(store, container)


def _mount_and_attach(store: Store, container: Container
                      ) -> tuple[str, network.Attachment | None]:
    """The rootfs mounted and the network set up; a bridge's (netavark, ~0.1 s of waiting on
    subprocesses) in a thread while the mount's daemon starts. Neither is left if one fails."""
    if container.spec.network in network.MODES or container.spec.network == network.SLIRP:
        point = rootfs.mount(store, container)
        try:
            return point, _attach_network(store, container)
        except BaseException:
            with contextlib.suppress(ImageError):
                rootfs.unmount(store, records.get(store, container.id))
            raise
    outcome: dict[str, Any] = {}

    def attach() -> None:
        try:
            outcome["attached"] = _attach_network(store, container)
        except BaseException as e:  # raised again in the caller's thread
            outcome["error"] = e

    setup = threading.Thread(target=attach, name="network-setup")
    setup.start()
    try:
        point = rootfs.mount(store, container)
    except BaseException:
        setup.join()
        detach_network(store, container)
        raise
    setup.join()
    if "error" in outcome:
        with contextlib.suppress(ImageError):
            rootfs.unmount(store, records.get(store, container.id))
        raise outcome["error"]
    return point, outcome["attached"]


def _attach_network(store: Store, container: Container) -> network.Attachment | None:
    """The container's namespace on its bridge network (None: the host's network, or none)."""
    if container.spec.network == network.SLIRP:
        slirp.check()
        slirp.check_ports(container.spec.publish)
        return None  # started by the runtime's hook (slirp.py)
    if container.spec.network in network.MODES:
        return None
    return network.setup(store, container.id, container.name, container.spec.network,
                         container.spec.publish)


def detach_network(store: Store, container: Container) -> None:
    """Tears down the container's network, if it has one; a failure is reported, not
    raised (the container has ended either way)."""
    try:
        slirp.stop(records.container_dir(store, container.id))
        network.teardown(store, container.id)
    except (ImageError, OSError, subprocess.SubprocessError) as e:
        print(f"pyunion: warning: {container.name}: {e}", file=sys.stderr)


def _execute(store: Store, container: Container, point: str,
             attached: network.Attachment | None, log_path: str | None) -> int:
    directory = records.container_dir(store, container.id)
    bundle = write_bundle(directory, container, point, image_config(store, container.image_id),
                          attached)
    delete_runtime_state(store, container)  # a stale state from a crashed run, if any
    command = runtime_command(store, container) + [
        "--log", _fresh(directory, RUNTIME_LOG), "--log-format", "json",
        "run", "--pid-file", _fresh(directory, PID_FILE), "-b", bundle, container.id]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, PAUSED_MARK))
    records.update(store, container.id, state="running", started=time.time(), finished=None,
                   exit_code=None, monitor_pid=os.getpid())
    events.record_container(store, container, "start")
    code, failure = _run_runtime(store, container, command, log_path)
    # the network torn down before "exited": whoever waits finds it gone
    if attached is not None:
        _detach_and_unmount(store, container)
    elif container.spec.network == network.SLIRP:
        detach_network(store, container)
    records.update(store, container.id, state="exited", exit_code=code, finished=time.time(),
                   pid=None, monitor_pid=None)
    events.record_container(store, records.get(store, container.id), "die", exitCode=code)
    delete_runtime_state(store, container)  # (runc run deletes it itself when it can)
    with contextlib.suppress(ImageError):
        rootfs.unmount(store, records.get(store, container.id))
    if failure is not None:
        raise failure
    return code


def _detach_and_unmount(store: Store, container: Container) -> None:
    """A bridge's teardown (netavark: ~0.15 s, the veth's removal and the rules) in a thread
    while the runtime's state goes and the rootfs is unmounted."""
    teardown = threading.Thread(target=detach_network, args=(store, container),
                                name="network-teardown")
    teardown.start()
    try:
        delete_runtime_state(store, container)
        with contextlib.suppress(ImageError):
            rootfs.unmount(store, records.get(store, container.id))
    finally:
        teardown.join()


def _fresh(directory: str, name: str) -> str:
    """``directory/name``, a previous run's file removed."""
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return path


def _run_runtime(store: Store, container: Container, command: list[str],
                 log_path: str | None) -> tuple[int, StartFailed | None]:
    """Runs the runtime to its end: the exit status, and the failure if it could not start the
    process. The container's output goes to its log (logs.py): ``log_path`` given (a detached
    monitor), only there; else to ours as well, except with a terminal (``run -it``), whose
    output is the runtime's to relay and is not logged."""
    directory = records.container_dir(store, container.id)
    if log_path is None and container.spec.tty:
        return _run_relayed(store, container, command, None, None, 2)
    writer = logs.LogWriter(log_path or logs.log_path(directory))
    tee = log_path is None
    stdin = None if tee else _detached_stdin(directory, container)
    try:
        return _run_relayed(store, container, command, stdin,
                            logs.sink(writer, "stdout", 1 if tee else None),
                            logs.sink(writer, "stderr", 2 if tee else None))
    finally:
        writer.close()
        if stdin not in (None, subprocess.DEVNULL):
            os.close(stdin)


STDIN_FIFO = "stdin"  # a detached -i container's stdin, which ``attach`` writes to


def _detached_stdin(directory: str, container: Container) -> int:
    """A detached container's stdin: /dev/null, or for ``-i`` a FIFO that ``attach`` writes
    to (opened read-write here, so that it never reads as ended between two attaches)."""
    if not container.spec.interactive:
        return subprocess.DEVNULL
    path = _fresh(directory, STDIN_FIFO)
    try:
        os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR)
    except OSError:
        return subprocess.DEVNULL


def _run_relayed(store: Store, container: Container, command: list[str], stdin: int | None,
                 stdout: Callable[[bytes], None] | None,
                 stderr: int | Callable[[bytes], None]) -> tuple[int, StartFailed | None]:
    """``_run_runtime`` with the runtime's stdout through ``stdout`` (None: inherited) and its
    stderr through a relay that keeps its own error apart."""
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe() if stdout is not None else (None, None)
    try:
        proc = subprocess.Popen(command, stdin=stdin, stdout=out_write, stderr=write_end)
    except OSError as e:
        for fd in (read_end, out_read):
            if fd is not None:
                os.close(fd)
        return 127, StartFailed(f"cannot start the runtime: {e.strerror}")
    finally:
        for fd in (write_end, out_write):
            if fd is not None:
                os.close(fd)
    out_relay = logs.relay(out_read, stdout) if out_read is not None and stdout else None
    relay = StderrRelay(read_end, stderr,
                        os.path.join(records.container_dir(store, container.id), RUNTIME_LOG))
    records.update(store, container.id, pid=proc.pid)
    code = wait_forwarding_signals(proc)
    error = relay.finish()
    if out_relay is not None:
        out_relay.join(30)
    if error is None:
        return code, None
    failure = start_failure(container.spec.runtime, error)
    return failure.exit_status or 125, failure


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


def start_detached(store: Store, container: Container, *, clear: bool = True) -> None:
    """Starts the container under a detached monitor; returns once its process runs (or ran).
    StartFailed (the monitor's message and status) if it could not be started."""
    directory = records.container_dir(store, container.id)
    log = logs.log_path(directory)
    started = _fresh(directory, PID_FILE)
    if clear:
        restart.clear(store, container)
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
        if os.path.exists(started):
            return
        status = proc.poll()
        if status is not None:
            _check_monitor_status(status, directory, container)
            return
        time.sleep(0.02)
    raise ImageError(f"container {container.name} did not start within 60 s")


def _check_monitor_status(status: int, directory: str, container: Container) -> None:
    """A monitor that exited before its process ran: 0 if it ran anyway (briefly), else the
    status of the failure (126 or 127: the command's; see monitor.py) and its message."""
    if status == 0:
        return
    message = _tail(os.path.join(directory, "monitor.log"))
    raise StartFailed(message or f"container {container.name} failed to start (its monitor "
                      f"exited with status {status})", status if status in (126, 127) else None)


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("pyunion: error: ") if lines else ""


def stop(store: Store, container: Container, timeout: float) -> None:
    """SIGTERM (or the image's StopSignal), then SIGKILL after ``timeout`` seconds."""
    restart.mark_stopped(store, container)  # also between the runs of a restarting one
    if container.state != "running":
        return
    send_signal(store, container, signal.SIGTERM)
    thaw(store, container)
    if not _wait_exited(store, container, timeout):
        send_signal(store, container, signal.SIGKILL)
        _wait_exited(store, container, 30)
    events.record_container(store, container, "stop")


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
