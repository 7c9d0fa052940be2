"""The detached monitor of one container (``pyunion run -d``, ``pyunion start``).

A process of its own (its own process session too), which runs ``Session.monitor``
(session.py): the container's session with its output going to its log, again as its
``--restart`` policy says (restart.py), and the container removed at the end if asked
(``--rm``).

Its own exit status is for ``start_detached``: 0 once the process ran (its status is in the
record), else that of the failure (126 or 127 when the runtime could not invoke or find the
command, 125 otherwise), with the error as the last line of its stderr. A container that could
not start is left for the ``start_detached`` waiting for it to report (and remove, if ``--rm``).
"""

from __future__ import annotations

import argparse
import sys

from unionfs.image.container import records
from unionfs.image.container.session import Session
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
    except ImageError as e:
        print(f"pyunion: error: {e}", file=sys.stderr, flush=True)
        return e.exit_status or 125
    return Session(store, container).monitor(log)


if __name__ == "__main__":
    raise SystemExit(main())
