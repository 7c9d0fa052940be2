"""The store's event log (``events.log``): what ``pyunion events`` reads.

There is no daemon to see things happen, so the commands that make them happen record them:
each event one JSON line (time in nanoseconds, type, action, actor id, attributes), appended
with ``O_APPEND`` in a single write so that concurrent commands never interleave a line.
Recording never fails a command: an event that cannot be written is lost, not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

EVENTS_FILE = "events.log"
MAX_LOG_BYTES = 8 << 20  # past this, the older half is dropped at the next write


@dataclass
class Event:
    time_nano: int
    type: str                 # container, image
    action: str               # create, start, die, stop, kill, destroy, pull, tag, …
    actor_id: str
    attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"time": self.time_nano, "type": self.type, "action": self.action,
                           "id": self.actor_id, "attributes": self.attributes},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Event | None:
        try:
            data = json.loads(line)
            return cls(int(data["time"]), str(data["type"]), str(data["action"]),
                       str(data["id"]), {str(k): str(v) for k, v in
                                         (data.get("attributes") or {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # a torn or foreign line

    def docker_view(self) -> dict[str, Any]:
        """The fields docker's ``events --format`` offers (and podman's Name/Image/Status)."""
        return {"Type": self.type, "Action": self.action, "Status": self.action,
                "ID": self.actor_id, "id": self.actor_id,
                "From": self.attributes.get("image", ""),
                "Actor": {"ID": self.actor_id, "Attributes": self.attributes},
                "Name": self.attributes.get("name", ""),
                "Image": self.attributes.get("image", ""),
                "Scope": "local", "Time": self.time_nano // 1_000_000_000,
                "TimeNano": self.time_nano}


def log_path(root: str) -> str:
    return os.path.join(root, EVENTS_FILE)


def record(store, type_: str, action: str, actor_id: str, **attributes: Any) -> None:
    """Appends one event to the store's log (``store``: anything with a ``root``)."""
    event = Event(time.time_ns(), type_, action, actor_id,
                  {k: str(v) for k, v in attributes.items() if v is not None})
    path = log_path(store.root)
    with contextlib.suppress(OSError):
        _trim(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (event.to_json() + "\n").encode())
        finally:
            os.close(fd)


def record_container(store, container, action: str, **attributes: Any) -> None:
    """A container's event, with docker's attributes: its image and name, its labels."""
    record(store, "container", action, container.id, **container.spec.labels,
           image=container.image_name, name=container.name, **attributes)


def _trim(path: str) -> None:
    """Keeps the log bounded: past MAX_LOG_BYTES, its newer half replaces it."""
    try:
        if os.path.getsize(path) <= MAX_LOG_BYTES:
            return
    except FileNotFoundError:
        return
    with open(path, "rb") as f:
        f.seek(-MAX_LOG_BYTES // 2, os.SEEK_END)
        f.readline()  # to the start of a whole line
        rest = f.read()
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as out:
        out.write(rest)
    os.replace(temporary, path)


def read(root: str, offset: int = 0) -> tuple[list[Event], int]:
    """The events from byte ``offset`` on (whole lines only) and the offset after them."""
    try:
        with open(log_path(root), "rb") as f:
            if offset > os.fstat(f.fileno()).st_size:
                offset = 0  # trimmed meanwhile
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    events = [e for e in (Event.from_json(line) for line in
                          data[:end].decode(errors="replace").splitlines()) if e is not None]
    return events, offset + end
