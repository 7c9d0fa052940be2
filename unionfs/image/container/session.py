"""A container's session: one run of its process, from its rootfs's mount to its unmount.

A container runs under a *monitor*: the ``pyunion run`` (or ``start -a``) process itself in the
foreground, or a detached ``python -m unionfs.image.container.monitor`` for ``-d`` and
``start``. The monitor's ``Session.run``:

1. takes the container's lock (``session.lock`` in its directory, an flock: a killed command
   never leaves it held) and takes over what a killed session left: a rootfs mount its record
   does not know (a ``run`` SIGKILLed while it mounted), a stale runtime state;
2. mounts the rootfs and sets up the network, a bridge's in a thread while the mount's daemon
   starts (``_mount_and_attach``), writes the bundle, records "running" and the "start" event,
   and lets the lock go;
3. runs the runtime (``runc run``) and waits, forwarding signals, the container's output going
   to its log (logs.py);
4. takes the lock again and undoes step 2 in reverse: the network (first: whoever waits for
   "exited" finds it gone), the runtime's state, "exited" and the "die" event, the unmount.

A step that fails undoes the ones before it. When the runtime cannot start the process (its
command is missing or not executable, a mount fails), ``run`` raises ``StartFailed`` with the
runtime's message as one line (see runtime_output), the container recorded as exited with
docker's status for it.

The lock is not held while the process runs. ``stop``, ``kill``, ``restart``, ``wait`` and
``remove`` act on the session from another process: the runtime signals the process, and the
monitor tears the session down; ``remove`` then takes the lock (so it waits for that teardown)
and tears down what a dead monitor left. If the monitor dies, ``refresh`` (which
every command that shows or acts on a container calls first) asks the runtime and records the
end itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from unionfs.image import events
from unionfs.image.container import logs, network, records, restart, rootfs, runtime, slirp
from unionfs.image.container.bundle import image_config, write_bundle
from unionfs.image.container.records import Container
from unionfs.image.container.runtime_output import StderrRelay, start_failure
from unionfs.image.daemons import process_alive
from unionfs.image.errors import Conflict, ImageError, StartFailed
from unionfs.image.store import Store
from unionfs.image.store.locks import FileLock

LOCK_FILE = "session.lock"  # in the container's directory: held while a session changes state
STDIN_FIFO = "stdin"        # a detached -i container's stdin, which ``attach`` writes to
MONITOR_LOG = "monitor.log"
DAEMON_EXIT_WAIT = 60.0     # seconds a teardown waits for the rootfs's daemon to exit


def refresh(store: Store, container: Container) -> Container:
    """``Session.refresh``: the container as it really is (every command that shows or acts on
    containers asks this first)."""
    return Session(store, container).refresh()


class Session:
    """One container's session (see the module's docstring)."""

    def __init__(self, store: Store, container: Container) -> None:
        self.store = store
        self.container = container
        self.directory = records.container_dir(store, container.id)

    def current(self) -> Container:
        """The container as its record is now (``refresh``-ed)."""
        self.container = records.get(self.store, self.container.id)
        return self.refresh()

    def refresh(self) -> Container:
        """Corrects a 'running' record whose monitor is gone (crashed, killed); tears down the
        network a killed ``run`` set up before its container started."""
        store, container = self.store, self.container
        if container.state != "running":
            if os.path.exists(os.path.join(self.directory, network.STATE_FILE)) \
                    and network.orphaned(store, container.id):
                self.detach_network()
            return container
        if process_alive(container.monitor_pid, b"unionfs", b"pyunion"):
            return container
        state = runtime.runtime_state(store, container)
        if state is not None and state.get("status") in ("running", "paused", "created"):
            return container  # an orphan process, still running: stop/rm reach it via runc
        records.update(store, container.id, state="exited", finished=time.time(), pid=None,
                       monitor_pid=None,
                       exit_code=container.exit_code if container.exit_code is not None
                       else -1)
        runtime.delete_runtime_state(store, container)
        self.detach_network()
        self.container = records.get(store, container.id)
        return self.container

    def detach_network(self) -> None:
        """Tears down the container's network, if it has one; a failure is reported, not
        raised (the container has ended either way)."""
        try:
            slirp.stop(self.directory)
            network.teardown(self.store, self.container.id)
        except (ImageError, OSError, subprocess.SubprocessError) as e:
            print(f"pyunion: warning: {self.container.name}: {e}", file=sys.stderr)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The container's lock, held (waiting for it) in the block. Not re-entrant."""
        lock = FileLock(os.path.join(self.directory, LOCK_FILE))
        try:
            lock.acquire(exclusive=True)
        except FileNotFoundError:
            pass  # no directory (removed meanwhile): nothing there to guard
        try:
            yield
        finally:
            lock.release()  # (nothing if it was not taken)

    # ------------------------------------------------------------------ the monitor's part

    def run(self, *, log_path: str | None = None) -> int:
        """Runs the container's process to its end under this process (the monitor); its exit
        status. ``log_path``: a detached monitor's log (the output goes only there).
        StartFailed if the runtime could not start it."""
        with self.locked():
            self._take_over()
            point, attached = self._mount_and_attach()
            try:
                command = self._prepare(point, attached)
            except BaseException:
                self._undo_setup(attached is not None)
                raise
        try:
            code, failure = self._run_runtime(command, log_path)
        except BaseException:
            self.detach_network()  # the process may still run: only this
            raise
        with self.locked():
            self._tear_down(code, attached is not None)
        if failure is not None:
            raise failure
        return code

    def _take_over(self) -> None:
        """The container read again, refused if another session runs it; what a killed
        session left (a mount it had not recorded yet, a stale runtime state) taken away.
        Under the lock."""
        container = self.current()
        if container.state == "running":
            raise Conflict(f"container {container.name} is already running")
        rootfs.unmount_unrecorded(self.store, container)
        runtime.delete_runtime_state(self.store, container)

    def _mount_and_attach(self) -> tuple[str, network.Attachment | None]:
        """The rootfs mounted and the network set up; a bridge's (netavark, ~0.1 s of waiting
        on subprocesses) in a thread while the mount's daemon starts. Neither is left if one
        fails."""
        store, container = self.store, self.container
        if container.spec.network in network.MODES or container.spec.network == network.SLIRP:
            point = rootfs.mount(store, container)
            try:
                return point, self._attach_network()
            except BaseException:
                self._unmount()
                raise
        outcome: dict[str, Any] = {}

        def attach() -> None:
            try:
                outcome["attached"] = self._attach_network()
            except BaseException as e:  # raised again in the caller's thread
                outcome["error"] = e

        setup = threading.Thread(target=attach, name="network-setup")
        setup.start()
        try:
            point = rootfs.mount(store, container)
        except BaseException:
            setup.join()
            self.detach_network()
            raise
        setup.join()
        if "error" in outcome:
            self._unmount()
            raise outcome["error"]
        return point, outcome["attached"]

    def _attach_network(self) -> network.Attachment | None:
        """The container's namespace on its bridge network (None: the host's network, or
        none, or slirp4netns, which the runtime's hook starts: slirp.py)."""
        spec = self.container.spec
        if spec.network == network.SLIRP:
            slirp.check()
            slirp.check_ports(spec.publish)
            return None
        if spec.network in network.MODES:
            return None
        return network.setup(self.store, self.container.id, self.container.name, spec.network,
                             spec.publish)

    def _prepare(self, point: str, attached: network.Attachment | None) -> list[str]:
        """The bundle written and "running" recorded; the runtime's command line."""
        store, container = self.store, self.container
        bundle = write_bundle(self.directory, container, point,
                              image_config(store, container.image_id), attached)
        command = runtime.run_command(store, container, bundle,
                                      log=_fresh(self.directory, runtime.RUNTIME_LOG),
                                      pid_file=_fresh(self.directory, runtime.PID_FILE))
        runtime.clear_paused(store, container)
        records.update(store, container.id, state="running", started=time.time(),
                       finished=None, exit_code=None, monitor_pid=os.getpid())
        events.record_container(store, container, "start")
        return command

    def _undo_setup(self, bridged: bool) -> None:
        """A setup that failed after the mount: the network, then the rootfs."""
        if bridged or self.container.spec.network == network.SLIRP:
            self.detach_network()
        self._unmount()

    def _tear_down(self, code: int, bridged: bool) -> None:
        """The end of a run, recorded and undone. The network goes before "exited" is recorded
        (whoever waits finds it gone); a bridge's teardown (netavark: ~0.15 s) in a thread
        while the runtime's state goes and the rootfs is unmounted, which otherwise follow
        "exited"."""
        store, container = self.store, self.container
        if bridged:
            teardown = threading.Thread(target=self.detach_network, name="network-teardown")
            teardown.start()
            try:
                self._release_rootfs()
            finally:
                teardown.join()
        elif container.spec.network == network.SLIRP:
            self.detach_network()
        records.update(store, container.id, state="exited", exit_code=code,
                       finished=time.time(), pid=None, monitor_pid=None)
        events.record_container(store, records.get(store, container.id), "die", exitCode=code)
        if not bridged:
            self._release_rootfs()

    def _release_rootfs(self) -> None:
        """The runtime's state deleted (``runc run`` deletes it when it can), the rootfs
        unmounted."""
        runtime.delete_runtime_state(self.store, self.container)
        self._unmount()

    def _unmount(self) -> None:
        """The rootfs unmounted and its daemon gone (``self.container`` knows the mount: it
        was read under the lock, and ``rootfs.mount`` updates it). The daemon is waited for
        up to ``DAEMON_EXIT_WAIT``, not ``rootfs.unmount``'s usual 10 s: a loaded machine has
        seen longer exits, and until the daemon exits it holds the upper, which the next
        session (waiting for the lock) mounts."""
        with contextlib.suppress(ImageError):
            rootfs.unmount(self.store, self.container, daemon_wait=DAEMON_EXIT_WAIT)

    def _run_runtime(self, command: list[str], log_path: str | None
                     ) -> tuple[int, StartFailed | None]:
        """Runs the runtime to its end: the exit status, and the failure if it could not start
        the process. The container's output goes to its log (logs.py): ``log_path`` given (a
        detached monitor), only there; else to ours as well, except with a terminal
        (``run -it``), whose output is the runtime's to relay and is not logged."""
        if log_path is None and self.container.spec.tty:
            return self._run_relayed(command, None, None, 2)
        writer = logs.LogWriter(log_path or logs.log_path(self.directory))
        tee = log_path is None
        stdin = None if tee else self._detached_stdin()
        try:
            return self._run_relayed(command, stdin,
                                     logs.sink(writer, "stdout", 1 if tee else None),
                                     logs.sink(writer, "stderr", 2 if tee else None))
        finally:
            writer.close()
            if stdin not in (None, subprocess.DEVNULL):
                os.close(stdin)

    def _detached_stdin(self) -> int:
        """A detached container's stdin: /dev/null, or for ``-i`` a FIFO that ``attach``
        writes to (opened read-write here, so that it never reads as ended between two
        attaches)."""
        if not self.container.spec.interactive:
            return subprocess.DEVNULL
        path = _fresh(self.directory, STDIN_FIFO)
        try:
            os.mkfifo(path, 0o600)
            return os.open(path, os.O_RDWR)
        except OSError:
            return subprocess.DEVNULL

    def _run_relayed(self, command: list[str], stdin: int | None,
                     stdout: Callable[[bytes], None] | None,
                     stderr: int | Callable[[bytes], None]) -> tuple[int, StartFailed | None]:
        """``_run_runtime`` with the runtime's stdout through ``stdout`` (None: inherited) and
        its stderr through a relay that keeps its own error apart."""
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
        relay = StderrRelay(read_end, stderr, os.path.join(self.directory, runtime.RUNTIME_LOG))
        records.update(self.store, self.container.id, pid=proc.pid)
        code = runtime.wait_forwarding_signals(proc)
        error = relay.finish()
        if out_relay is not None:
            out_relay.join(30)
        if error is None:
            return code, None
        failure = start_failure(self.container.spec.runtime, error)
        return failure.exit_status or 125, failure

    def monitor(self, log_path: str) -> int:
        """A detached monitor's work: runs the container, again as its ``--restart`` policy
        says, and removes it at the end if asked (``--rm``). Its exit status is for
        ``start_detached``: 0 once the process ran (its status is in the record), else that
        of the failure, whose message is the last line of its stderr."""
        try:
            code = self.run(log_path=log_path)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr, flush=True)
            return e.exit_status or 125
        restarts = 0
        while restart.wanted(self.store, self.container, code, restarts):
            time.sleep(restart.delay(restarts))
            restarts += 1
            try:
                # gone if it was removed meanwhile
                container = records.get(self.store, self.container.id)
                if container.state == "running" or restart.stopped_by_user(self.store,
                                                                           container):
                    return 0
                restart.count(self.store, container, restarts)
                self.container = container
                code = self.run(log_path=log_path)
            except ImageError as e:
                print(f"pyunion: error: {e}", file=sys.stderr, flush=True)
                return 0
        if self.container.spec.auto_remove:
            try:
                self.remove(force=True)
            except ImageError as e:
                print(f"pyunion: error: {e}", file=sys.stderr)
        return 0

    # ------------------------------------------------------------------ from other commands

    def start_detached(self, *, clear: bool = True) -> None:
        """Starts the container under a detached monitor; returns once its process runs (or
        ran). StartFailed (the monitor's message and status) if it could not be started; the
        container is then removed if it was to be (``--rm``): its monitor leaves that to us."""
        try:
            self._start_monitor(clear)
        except StartFailed:
            if self.container.spec.auto_remove:
                self.remove(force=True)
            raise

    def _start_monitor(self, clear: bool) -> None:
        store, container, directory = self.store, self.container, self.directory
        started = _fresh(directory, runtime.PID_FILE)
        if clear:
            restart.clear(store, container)
        # the previous run's "exited" must not be taken for this one's
        records.update(store, container.id, state="created", exit_code=None, finished=None)
        monitor_log = open(os.path.join(directory, MONITOR_LOG), "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "unionfs.image.container.monitor", "--root", store.root,
                 "--log", logs.log_path(directory), container.id],
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
                self._check_monitor_status(status)
                return
            time.sleep(0.02)
        raise ImageError(f"container {container.name} did not start within 60 s")

    def _check_monitor_status(self, status: int) -> None:
        """A monitor that exited before its process ran: 0 if it ran anyway (briefly), else
        the status of the failure (126 or 127: the command's) and its message."""
        if status == 0:
            return
        message = _tail(os.path.join(self.directory, MONITOR_LOG))
        raise StartFailed(message or f"container {self.container.name} failed to start (its "
                          f"monitor exited with status {status})",
                          status if status in (126, 127) else None)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        container = self.container
        restart.mark_stopped(self.store, container)  # also between the runs of a restarting one
        if container.state != "running":
            return
        runtime.send_signal(self.store, container, signal.SIGTERM)
        runtime.thaw(self.store, container)
        if not self._wait_exited(timeout):
            runtime.send_signal(self.store, container, signal.SIGKILL)
            self._wait_exited(30)
        events.record_container(self.store, container, "stop")

    def kill(self, signum: int) -> None:
        """Sends ``signum`` to the running container's process (``pyunion kill``)."""
        container = self.container
        if runtime.is_paused(self.store, container):
            raise Conflict(f"container {container.name} is paused: unpause it first")
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            restart.mark_stopped(self.store, container)
        # recorded first: the container's "die", which the signal may cause at once, is
        # recorded by its monitor and must come after it, as in docker's event stream
        events.record_container(self.store, container, "kill", signal=signum)
        if not runtime.send_signal(self.store, container, signum):
            raise ImageError(f"cannot signal {container.name}: the runtime refused")

    def restart(self, timeout: float) -> None:
        """``stop`` if it runs, then ``start_detached`` (``pyunion restart``)."""
        if self.container.state == "running":
            self.stop(timeout)
        self.container = records.get(self.store, self.container.id)
        self.start_detached()
        events.record_container(self.store, self.container, "restart")

    def _wait_exited(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.current().state != "running":
                return True
            time.sleep(0.05)
        return False

    def wait(self) -> int:
        """Waits for the container's process to end; its exit status."""
        while True:
            current = self.current()
            if current.state != "running":
                return current.exit_code if current.exit_code is not None else -1
            time.sleep(0.1)

    def remove(self, *, force: bool, quiet: bool = False) -> None:
        """Removes the container: refused while it runs unless forced (then it is killed and
        its monitor's teardown waited for: the lock); what a dead monitor or a killed command
        left is taken away under the lock."""
        while True:
            self._end_for_removal(force)
            with self.locked():
                container = self.current()
                if container.state == "running":  # a session started meanwhile
                    continue
                rootfs.unmount(self.store, container)
                rootfs.unmount_unrecorded(self.store, container)  # before the rmtree below
                runtime.delete_runtime_state(self.store, container)
                self.detach_network()  # a run killed with its monitor leaves it
                records.delete_record(self.store, container.id)  # its directory: garbage now
                shutil.rmtree(self.directory, ignore_errors=True)
                break
        if not quiet:
            events.record_container(self.store, container, "destroy")

    def _end_for_removal(self, force: bool) -> None:
        """A running container: refused (Conflict) unless ``force``, else SIGKILLed and waited
        for."""
        container = self.current()
        if container.state != "running":
            return
        if not force:
            raise Conflict(f"cannot remove container {container.name}: it is running "
                           "(stop it first, or use rm -f)")
        restart.mark_stopped(self.store, container)
        runtime.send_signal(self.store, container, 9)
        runtime.thaw(self.store, container)
        self.wait()


def _fresh(directory: str, name: str) -> str:
    """``directory/name``, a previous run's file removed."""
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return path


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("pyunion: error: ") if lines else ""
