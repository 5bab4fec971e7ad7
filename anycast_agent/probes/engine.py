"""The loop machinery callback probes run on: one timer heap and one epoll set for all of them.

asyncio pays per event in Python: a TimerHandle (compared in Python as the heap orders it) for
every timer, a SelectorKey and a Handle for every socket registration and readiness. At
thousands of probes a second that bookkeeping cost more than the probes' own work (profiled
with py-spy, docs/performance.md). The engine keeps the loop for what it is good at, one
wake-up, and does the per-probe part with C-level structures: a heap of plain tuples behind a
single loop timer, and an epoll set of its own whose descriptor the loop watches.

Linux only (select.epoll), as the agent is.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import select
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# Timer slack, as the kernel's: the loop wakes this long after the earliest timer and runs every
# timer due by then in one pass, so probes a few hundred microseconds apart share a wake-up
# instead of paying one each. Bounds how late (never how early) a probe starts or times out:
# 5 ms is 0.5% of a 1 s interval, and woke the loop measurably less often than 2 ms.
SLACK_S = 0.005


class Engine:
    """Timers and socket readiness for callback probes, on the running loop.

    Timers cannot be cancelled: whoever set one ignores it when it comes too late (probes
    count their checks for that). A callback that raises is reported to the loop's exception
    handler and does not stop the others.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._epoll = select.epoll()
        self._io: dict[int, Callable[[int], None]] = {}
        self._loop.add_reader(self._epoll.fileno(), self._on_io)

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        """Call `callback(arg)` once the loop's clock reaches `when`."""
        heappush(self._heap, (when, next(self._seq), callback, arg))
        if when < self._armed_at:
            self._arm(when)

    def watch(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Call `callback(events)` while `fd` is ready for `events` (level-triggered)."""
        self._epoll.register(fd, events)
        self._io[fd] = callback

    def rewatch(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd`; call it before closing the descriptor."""
        if self._io.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def close(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._heap.clear()
        self._io.clear()
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._loop.call_at(when + SLACK_S, self._run_due)

    def _run_due(self) -> None:
        self._armed = None
        self._armed_at = math.inf
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            _, _, callback, arg = heappop(heap)
            try:
                callback(arg)
            except Exception as exc:
                self._report(exc, callback)
        if heap:
            self._arm(heap[0][0])

    def _on_io(self) -> None:
        io = self._io
        for fd, events in self._epoll.poll(0):
            callback = io.get(fd)
            if callback is None:
                continue
            try:
                callback(events)
            except Exception as exc:
                self._report(exc, callback)

    def _report(self, exc: Exception, callback: object) -> None:
        self._loop.call_exception_handler(
            {"message": f"probe engine callback {callback!r} failed", "exception": exc}
        )
