"""The detached monitor of one container (``pyunion run -d``, ``pyunion start``).

Runs in its own session: mounts the rootfs, runs the runtime with the container's output going
to its log, records the exit status, unmounts, and removes the container if asked (``--rm``).
"""

from __future__ import annotations

import argparse
import sys

from unionfs.image.container import lifecycle, records, runtime
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
        container = records.get(store, args.container)
        code = runtime.execute(store, container, log_path=args.log)
        if container.spec.auto_remove:
            lifecycle.remove(store, records.get(store, container.id), force=True)
        return code
    except ImageError as e:
        print(f"pyunion: error: {e}", file=sys.stderr)
        return 125
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
