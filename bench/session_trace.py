"""How often ``pyunion run --rm`` crosses between the container's modules (a structure measure,
not a timing).

Usage: ``.venv/bin/python -m bench.session_trace [--network host] [--json]`` (as root, like the
container tests; runc and busybox-static installed).

It makes a throw-away store in a temporary directory, imports a busybox-static rootfs into it
(``pyunion import``, a subprocess, not traced), then runs ``pyunion --root STORE run --rm
--network NETWORK busybox true`` in this process (``unionfs.image.cli.main``) under
``sys.setprofile`` (and ``threading.setprofile``: the network's setup thread). Counted are the
Python-level calls and returns whose function lives in a *tracked* module
(``unionfs.image.container.*`` and ``unionfs.image.cli.*``, not the package ``unionfs.image.cli``
itself, which only dispatches): a call is a transition when the nearest tracked frame below it
on the stack is in another tracked module, and its return is one too (the flow goes back). Calls
through untracked modules in between (the store, events, the FUSE API) are skipped over:
``session -> store -> records`` counts once. Module bodies (imports) are not counted, and the
modules ``run`` imports are imported before the trace starts.

Prints the number of transitions, the tracked modules the flow entered (with calls into each),
how many pairs of modules it crosses between, and the busiest crossings. The store is deleted
at the end (its rootfs unmounted by ``--rm``; the script fails if anything is still mounted
below it).

Measured (host network): before container/session.py (commit 53e0f99), 122 transitions, 14
modules, 23 module pairs; with it, 124, 15 (session.py) and 22. The session still calls
records, rootfs, network, bundle, logs and runtime, each of which stays one concern; what went
is the zig-zag of cli.run -> runtime/lifecycle/records and lifecycle -> runtime -> rootfs
(cli.run now calls create and the session only). New work costs 10 of the 124: the take-over
under the container's lock (the record read again, an unrecorded mount looked for: 8) and the
teardown's check that the rootfs's daemon has exited (2).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

TRACKED_PREFIXES = ("unionfs.image.container.", "unionfs.image.cli.")


def _tracked(frame: FrameType | None) -> str | None:
    """The module of ``frame`` if it is tracked (and not a module body), else None."""
    if frame is None or frame.f_code.co_name == "<module>":
        return None
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith(TRACKED_PREFIXES) else None


def _nearest_tracked(frame: FrameType | None) -> str | None:
    while frame is not None:
        module = _tracked(frame)
        if module is not None:
            return module
        frame = frame.f_back
    return None


class Transitions:
    """The profile function: counts crossings between tracked modules."""

    def __init__(self) -> None:
        self.count = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event not in ("call", "return"):
            return
        module = _tracked(frame)
        if module is None:
            return
        other = _nearest_tracked(frame.f_back)
        with self._lock:
            if event == "call":
                self.calls[module] += 1
            if other is not None and other != module:
                self.count += 1
                pair = (other, module) if event == "call" else (module, other)
                self.pairs[pair] += 1

    def summary(self) -> dict[str, Any]:
        short = lambda m: m.removeprefix("unionfs.image.")  # noqa: E731
        return {
            "transitions": self.count,
            "modules": len(self.calls),
            "module_pairs": len({frozenset(pair) for pair in self.pairs}),
            "calls_per_module": {short(m): n for m, n in sorted(self.calls.items())},
            "busiest_pairs": [f"{short(a)} -> {short(b)}: {n}"
                              for (a, b), n in self.pairs.most_common(15)],
        }


def _busybox_rootfs(rootfs: Path) -> None:
    from bench.images import _busybox_rootfs as make
    make(rootfs)


def _mounted_below(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def trace_run(network: str) -> dict[str, Any]:
    # what run imports when it is chosen, imported before the trace (module bodies are noise)
    import unionfs.image.cli.run  # noqa: F401
    import unionfs.image.container.monitor  # noqa: F401
    from unionfs.image import cli

    with tempfile.TemporaryDirectory(prefix="session-trace-") as tmp:
        root = Path(tmp) / "store"
        rootfs = Path(tmp) / "rootfs"
        _busybox_rootfs(rootfs)
        subprocess.run([sys.executable, "-m", "unionfs.image.cli", "--root", str(root),
                        "import", "-q", "-c", 'CMD ["/bin/sh"]', str(rootfs), "busybox"],
                       check=True, capture_output=True, timeout=300)
        argv = ["--root", str(root), "run", "--rm", "--network", network, "busybox", "true"]
        profiler = Transitions()
        threading.setprofile(profiler)
        sys.setprofile(profiler)
        try:
            status = cli.main(argv)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
        left = _mounted_below(Path(tmp))
        if left:
            raise SystemExit(f"still mounted after run --rm: {left}")
    result = profiler.summary()
    result["exit_status"] = status
    result["command"] = "pyunion run --rm --network " + network + " busybox true"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_trace",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="host", help="run's --network (default host)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):  # run prints nothing for true; imports might
        result = trace_run(args.network)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['command']}: exit status {result['exit_status']}")
    print(f"module transitions (calls and returns): {result['transitions']}")
    print(f"tracked modules entered: {result['modules']}")
    print(f"pairs of modules the flow crosses between: {result['module_pairs']}")
    for module, calls in result["calls_per_module"].items():
        print(f"  {module}: {calls} calls")
    print("busiest crossings:")
    for line in result["busiest_pairs"]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
