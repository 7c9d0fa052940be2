"""The daemon's own request primitives, under trio: the worker-thread hop for blocking system
calls (fs/offload.py) and the namespace lock (state.NamespaceLock). The mounted behaviour
they serve is tested by test_request_concurrency.py; these pin down what they promise."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import trio

from unionfs.fs import offload
from unionfs.fs.state import NamespaceLock


def test_offload_returns_results_and_raises_errors_in_the_caller(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")

    async def main() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            assert await offload.run_sync(os.pread, fd, 4, 0) == b"data"
            await offload.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        with pytest.raises(OSError) as raised:
            await offload.run_sync(os.fsync, fd)  # closed
        assert raised.value.errno == errno.EBADF  # raised where it was awaited

    trio.run(main)


def test_offloaded_calls_run_in_other_threads_while_the_loop_goes_on() -> None:
    """A slow call in a worker does not stop other tasks; slow calls run side by side."""
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    ticks = 0

    def slow() -> None:
        threads.add(threading.get_ident())
        time.sleep(0.3)

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            start = trio.current_time()
            async with trio.open_nursery() as calls:
                for _ in range(3):
                    calls.start_soon(offload.run_sync, slow)
            took = trio.current_time() - start
            nursery.cancel_scope.cancel()
        return took

    took = trio.run(main)
    assert loop_thread not in threads and len(threads) == 3
    assert took < 0.8  # three 0.3 s calls at once, not one after the other
    assert ticks >= 10  # the loop served other tasks meanwhile


def test_namespace_lock_excludes_and_hands_over_in_arrival_order() -> None:
    lock = NamespaceLock()
    order: list[int] = []
    inside = 0

    async def change(i: int) -> None:
        nonlocal inside
        await lock.acquire()
        inside += 1
        assert inside == 1
        order.append(i)
        await trio.sleep(0.001)  # a change that waits (a copy-up in a thread)
        inside -= 1
        lock.release()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(change, i)
                await trio.sleep(0)

    trio.run(main)
    assert order == list(range(10))
    assert not lock.held
