"""``--restart`` policies, with docker's documented meanings: ``no``; ``on-failure[:N]`` (again
after a non-zero exit, at most N times if N is given); ``always`` and ``unless-stopped`` (again
after any exit). None restarts a container that ``stop``, ``kill`` or ``rm`` ended (a mark in
its directory, cleared when it is started again). The detached monitor does the restarting,
waiting 100 ms, doubled each time, at most a minute, in between (docker's back-off). With no
daemon, nothing restarts containers at boot: ``always`` and ``unless-stopped`` are the same.
"""

from __future__ import annotations

import contextlib
import os

from unionfs.image.container import records
from unionfs.image.container.records import Container
from unionfs.image.store import Store

STOPPED_MARK = "stopped-by-user"
COUNT_FILE = "restart-count"


def _path(store: Store, container: Container, name: str) -> str:
    return os.path.join(records.container_dir(store, container.id), name)


def mark_stopped(store: Store, container: Container) -> None:
    with contextlib.suppress(OSError):
        open(_path(store, container, STOPPED_MARK), "w").close()


def clear(store: Store, container: Container) -> None:
    """At a start by the user: no stop mark, no restarts counted."""
    for name in (STOPPED_MARK, COUNT_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(store, container, name))


def stopped_by_user(store: Store, container: Container) -> bool:
    return os.path.exists(_path(store, container, STOPPED_MARK))


def count(store: Store, container: Container, restarts: int) -> None:
    with open(_path(store, container, COUNT_FILE), "w") as f:
        f.write(str(restarts))


def restart_count(store: Store, container: Container) -> int:
    try:
        with open(_path(store, container, COUNT_FILE)) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def wanted(store: Store, container: Container, code: int, restarts: int) -> bool:
    name, _, limit = container.spec.restart.partition(":")
    if name == "no" or stopped_by_user(store, container):
        return False
    if name == "on-failure":
        return code != 0 and (not limit or restarts < int(limit))
    return True


def delay(restarts: int) -> float:
    return min(0.1 * 2 ** restarts, 60.0)
