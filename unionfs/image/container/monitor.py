"""The detached monitor of one container (``pyunion run -d``, ``pyunion start``).

Runs in its own session: mounts the rootfs, runs the runtime with the container's output going
to its log, records the exit status, unmounts, and removes the container if asked (``--rm``),
or runs it again as its ``--restart`` policy says (restart.py).

Its own exit status is for ``start_detached``: 0 once the process ran (its status is in the
record), else that of the failure (126 or 127 when the runtime could not invoke or find the
command, 125 otherwise), with the error as the last line of its stderr. A container that could
not start is left for the ``start_detached`` waiting for it to report (and remove, if ``--rm``).
"""

from __future__ import annotations

import argparse
import sys
import time

from unionfs.image.container import lifecycle, records, restart, runtime
from unionfs.image.errors import ImageError
from unionfs.image.store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyunion-monitor")
    parser.add_argument("--root", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("container")
    args = parser.parse_args(argv)
    store = Store(args.root)
    try:
        return _monitor(store, args.container, args.log)
    finally:
        store.close()


def _monitor(store: Store, name: str, log: str) -> int:
    try:
        container = records.get(store, name)
        code = runtime.execute(store, container, log_path=log)
    except ImageError as e:
        print(f"pyunion: error: {e}", file=sys.stderr, flush=True)
        return e.exit_status or 125
    restarts = 0
    while restart.wanted(store, container, code, restarts):
        time.sleep(restart.delay(restarts))
        restarts += 1
        try:
            container = records.get(store, container.id)  # gone if it was removed meanwhile
            if container.state == "running" or restart.stopped_by_user(store, container):
                return 0
            restart.count(store, container, restarts)
            code = runtime.execute(store, container, log_path=log)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr, flush=True)
            return 0
    if container.spec.auto_remove:
        try:
            lifecycle.remove(store, records.get(store, container.id), force=True)
        except ImageError as e:
            print(f"pyunion: error: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
