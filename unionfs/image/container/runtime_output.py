"""The OCI runtime's own messages, told apart from the container's output.

The runtime runs with ``--log FILE --log-format json``: its messages go to that file, one JSON
object a line. When it cannot start the container, runc logs the error there and then prints
the same message as the last line of its stderr, which without a terminal also carries the
container's stderr. ``StderrRelay`` copies that stream on to where the container's stderr goes,
leaving out a line that the log names as an error of the runtime's (so a container printing
such text itself is not touched). ``start_failure`` makes that message one line for the user
with docker's exit status: 127 when the command is not found, 126 when it cannot be invoked.

The copy is made by this process: if it is killed, the container's later writes to its stderr
fail (the runtime has no reader for them), as they would under docker's shim or podman's conmon.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable

from unionfs.image.errors import StartFailed

READ_SIZE = 1 << 16
# runc's error for a command it cannot run, from Go's exec.LookPath: exec: "NAME": CAUSE
_EXEC_ERROR = re.compile(r'exec: (".*"): (.*)$')
_NOT_FOUND = ("not found", "no such file or directory", "not a directory")
# what runc puts before the cause of a failed ``run``
_RUNC_PREFIXES = ("runc run failed: ", "unable to start container process: ")


def start_failure(runtime: str, message: str) -> StartFailed:
    """The runtime's error as one line, with docker's exit status for the command's errors."""
    match = _EXEC_ERROR.search(message)
    if match is None:
        for prefix in _RUNC_PREFIXES:
            message = message.removeprefix(prefix)
        return StartFailed(f"{runtime}: {message}")
    name, cause = match.groups()
    status = 127 if any(text in cause for text in _NOT_FOUND) else 126
    return StartFailed(f"{name}: {cause}", status)


def logged_errors(path: str) -> list[str]:
    """The messages of the error-level entries of a runtime's JSON log."""
    found = []
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") \
                    and isinstance(entry.get("msg"), str):
                found.append(entry["msg"])
    return found


class StderrRelay:
    """Copies ``source`` (the read end of the runtime's stderr; closed when done) to ``target``
    in a thread, without the runtime's error line; ``finish`` returns that error's message."""

    def __init__(self, source: int, target: int | Callable[[bytes], None],
                 log_path: str) -> None:
        self.source = source
        self.target: int | Callable[[bytes], None] | None = target
        self.log_path = log_path
        self.error: str | None = None
        self._log_size = 0
        self._errors: list[bytes] = []
        self._thread = threading.Thread(target=self._copy, name="runtime-stderr", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 30) -> str | None:
        """Waits for the end of the stream (the runtime has exited); the runtime's error."""
        self._thread.join(timeout)
        return self.error

    def _copy(self) -> None:
        try:
            while chunk := os.read(self.source, READ_SIZE):
                self._write(self._without_runtime_error(chunk))
        except OSError:
            pass
        finally:
            os.close(self.source)

    def _without_runtime_error(self, chunk: bytes) -> bytes:
        errors = self._runtime_errors()
        if not errors:
            return chunk
        kept = []
        for line in chunk.splitlines(keepends=True):
            text = line.rstrip(b"\n")
            # the container's last output may lack its newline: the error then ends the line
            error = next((e for e in errors if line.endswith(b"\n") and text.endswith(e)), None)
            if error is None:
                kept.append(line)
                continue
            self.error = error.decode(errors="replace")
            kept.append(text[:len(text) - len(error)])
        return b"".join(kept)

    def _runtime_errors(self) -> list[bytes]:
        """The log's error messages (read again only when the log has grown). The runtime logs
        an error before it prints it, so a line is never read before its log entry."""
        try:
            size = os.stat(self.log_path).st_size
        except OSError:
            return []
        if size != self._log_size:
            self._log_size = size
            self._errors = [m.encode() for m in logged_errors(self.log_path) if m]
        return self._errors

    def _write(self, data: bytes) -> None:
        """Writes on; once the target fails (a closed terminal), the rest is read and dropped
        so that the runtime never blocks on a full pipe."""
        if callable(self.target):
            self.target(data)
            return
        while data and self.target is not None:
            try:
                data = data[os.write(self.target, data):]
            except OSError:
                self.target = None
