"""Encodings of a snapshot made once and shared: the bytes the snapshot fixes, with the few values
that depend on the clock (ages, time left) filled in per request, and one cache that hands every
concurrent reader of a snapshot the same rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

S = TypeVar("S")
R = TypeVar("R")
C = TypeVar("C")
T = TypeVar("T")


class Clocks(NamedTuple):
    """The request's time: monotonic (ages) and wall clock (expiries)."""

    mono: float
    wall: float


Live = Callable[[Clocks], bytes]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A rendering: bytes, and in between them the values read from the clock per request."""

    parts: tuple[bytes | Live, ...]

    def fill(self, clocks: Clocks) -> bytes:
        """The body for a request at `clocks`: the very same bytes object while no part is live."""
        if len(self.parts) == 1 and isinstance(self.parts[0], bytes):
            return self.parts[0]
        return b"".join(p if isinstance(p, bytes) else p(clocks) for p in self.parts)


class Writer:
    """Builds an `Encoded` from text and live parts (consecutive text becomes one bytes part)."""

    def __init__(self) -> None:
        self._parts: list[bytes | Live] = []
        self._text: list[str] = []

    def text(self, s: str) -> None:
        self._text.append(s)

    def live(self, part: Live) -> None:
        self._flush()
        self._parts.append(part)

    def done(self) -> Encoded:
        self._flush()
        return Encoded(tuple(self._parts) or (b"",))

    def _flush(self) -> None:
        if self._text:
            self._parts.append("".join(self._text).encode())
            self._text = []


class Rows(Generic[R, C, T]):
    """What a rendering writes for each row the core shares between snapshots (a target's
    `TargetSnapshot` is the same immutable object until its record changes), kept for the
    next rendering: at 2,000 targets probed every second and a snapshot every 250 ms, three
    rows in four of a new snapshot were written for the previous one already.

    Keyed by the row object (its id, the row held with its text so the id is never reused);
    `write(row, context)` must depend on nothing else that can change while the row lives (the
    context is the row's service, which a record never leaves). A rendering of every row keeps
    what it wrote, and only that (the latest snapshot's rows); one of a few rows reads without
    keeping. Safe in the worker threads that render: a rendering swaps in a set of its own,
    never edits one that another reads from.
    """

    def __init__(self, write: Callable[[R, C], T]) -> None:
        self._write = write
        self._kept: dict[int, tuple[R, T]] = {}

    def writer(self, *, every_row: bool) -> Callable[[R, C], T]:
        """A rendering's `write`, which reuses what an earlier rendering wrote for the row."""
        kept, write = self._kept, self._write
        new: dict[int, tuple[R, T]] = {}
        if every_row:
            self._kept = new

        def text(row: R, context: C) -> T:
            made = kept.get(id(row))
            if made is None or made[0] is not row:
                made = (row, write(row, context))
            new[id(row)] = made
            return made[1]

        return text


def _end_turn(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)


class Renderings:
    """At most one rendering per snapshot and variant, shared by every request that asks for it,
    made in a worker thread (several ms at thousands of targets must not stall the probes).

    Only the latest snapshot's renderings are kept: a new snapshot (the agent makes one per
    change) drops the older ones, which their own waiters still hold until they are answered.

    Readers are handed their rendering one loop iteration apart when they are ready together
    (ten scrapers woken by one rendering): each then fills and writes its body (1.36 MB at
    2,000 targets, a copy and a send apiece) with the probes due meanwhile run in between,
    not after all ten.
    """

    def __init__(self) -> None:
        self._snapshot: object | None = None
        self._made: dict[Hashable, asyncio.Future[Encoded]] = {}
        self._flying: dict[Hashable, asyncio.Future[Encoded]] = {}
        self._last_turn: asyncio.Future[None] | None = None

    async def get(
        self,
        snapshot: Callable[[], S],
        variant: Hashable,
        render: Callable[[S], Encoded],
        *,
        join: bool = False,
    ) -> Encoded:
        """The rendering of `variant` for the current snapshot. `join`: a rendering of the same
        variant already under way serves this request too, although its snapshot is older by
        at most that rendering's duration (for scrapes; never for a read after a change)."""
        flying = self._flying.get(variant) if join else None
        if flying is not None:
            return await self._in_turn(flying)
        snap = snapshot()
        if snap is not self._snapshot:
            self._snapshot, self._made = snap, {}
        made = self._made.get(variant)
        if made is None:
            made = asyncio.get_running_loop().run_in_executor(None, render, snap)
            self._made[variant] = self._flying[variant] = made
            made.add_done_callback(lambda f: self._landed(variant, f))
        return await self._in_turn(made)

    async def _in_turn(self, made: asyncio.Future[Encoded]) -> Encoded:
        """`made`'s rendering, once the reader before this one has had its loop iteration (the
        caller writes its body in the same step as this returns)."""
        encoded = await asyncio.shield(made)
        loop = asyncio.get_running_loop()
        before, mine = self._last_turn, loop.create_future()
        self._last_turn = mine
        try:
            if before is not None and not before.done():  # it is this iteration's writer
                await asyncio.wait([before])  # (never cancels it, as awaiting it would)
        finally:
            loop.call_soon(_end_turn, mine)  # so the next reader writes in a later iteration
        return encoded

    def _landed(self, variant: Hashable, future: asyncio.Future[Encoded]) -> None:
        if self._flying.get(variant) is future:
            del self._flying[variant]
        failed = not future.cancelled() and future.exception() is not None
        if failed and self._made.get(variant) is future:
            del self._made[variant]  # never served again: the next request tries anew
