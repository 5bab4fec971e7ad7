"""Renderings: once per snapshot and variant, shared by concurrent readers, made off the loop,
with the clock's values filled in per request."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from functools import partial

import pytest

from anycast_agent.control.rendering import Clocks, Encoded, Renderings, Rows, Writer


@dataclass
class Snap:
    """Stands in for a Snapshot: renderings are keyed by the object, whatever it holds."""

    text: str


@dataclass
class Renderer:
    """Renders `snap.text`, counting calls; with `hold`, each call waits for it to be set."""

    calls: list[str] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event | None = None
    fail: bool = False

    def __call__(self, snap: Snap) -> Encoded:
        self.calls.append(snap.text)
        self.threads.append(threading.get_ident())
        self.started.set()
        if self.hold is not None:
            self.hold.wait(timeout=10)
        if self.fail:
            raise RuntimeError("render bug")
        w = Writer()
        w.text(snap.text)
        return w.done()


def _age(since: float, clocks: Clocks) -> bytes:
    return f"{clocks.mono - since:g}".encode()


def test_without_a_live_part_every_request_gets_the_same_bytes_object() -> None:
    w = Writer()
    w.text("a")
    w.text("b")
    encoded = w.done()
    assert encoded.parts == (b"ab",)
    assert encoded.fill(Clocks(1.0, 2.0)) is encoded.fill(Clocks(5.0, 6.0))


def test_live_parts_are_read_from_each_requests_clock() -> None:
    w = Writer()
    w.text("age ")
    w.live(partial(_age, 10.0))
    w.text(" s")
    encoded = w.done()
    assert [encoded.fill(Clocks(t, 0.0)) for t in (11.0, 70.0)] == [b"age 1 s", b"age 60 s"]


async def test_one_snapshot_is_rendered_once() -> None:
    cache, render, snap = Renderings(), Renderer(), Snap("x")
    first = await cache.get(lambda: snap, "v", render)
    again = await cache.get(lambda: snap, "v", render)
    assert again is first
    assert first.fill(Clocks(0.0, 0.0)) is again.fill(Clocks(0.0, 0.0))
    assert render.calls == ["x"]
    assert render.threads[0] != threading.get_ident()  # off the event loop


async def test_a_new_snapshot_is_rendered_anew_and_variants_apart() -> None:
    cache, render = Renderings(), Renderer()
    snaps = [Snap("a"), Snap("b")]
    assert (await cache.get(lambda: snaps[0], "v", render)).parts == (b"a",)
    assert (await cache.get(lambda: snaps[0], "w", render)).parts == (b"a",)
    assert (await cache.get(lambda: snaps[1], "v", render)).parts == (b"b",)
    assert render.calls == ["a", "a", "b"]


async def test_concurrent_readers_of_a_snapshot_share_one_rendering() -> None:
    cache, snap = Renderings(), Snap("x")
    render = Renderer(hold=threading.Event())
    readers = [asyncio.create_task(cache.get(lambda: snap, "v", render)) for _ in range(10)]
    await asyncio.to_thread(render.started.wait, 10)
    assert render.hold is not None
    render.hold.set()
    results = await asyncio.gather(*readers)
    assert render.calls == ["x"]
    assert all(r is results[0] for r in results)


async def test_readers_ready_together_are_answered_one_loop_iteration_apart() -> None:
    loop = asyncio.get_running_loop()
    iteration = 0

    def count() -> None:  # runs once per loop iteration
        nonlocal iteration
        iteration += 1
        ticking[0] = loop.call_soon(count)

    ticking = [loop.call_soon(count)]
    cache, snap = Renderings(), Snap("x")
    render = Renderer(hold=threading.Event())
    answered: list[tuple[int, int]] = []

    async def read(reader: int) -> Encoded:
        encoded = await cache.get(lambda: snap, "v", render)
        answered.append((reader, iteration))
        return encoded

    readers = [asyncio.create_task(read(i)) for i in range(3)]
    await asyncio.to_thread(render.started.wait, 10)
    assert render.hold is not None
    render.hold.set()
    results = await asyncio.gather(*readers)
    ticking[0].cancel()
    assert all(r is results[0] for r in results)
    assert [reader for reader, _ in answered] == [0, 1, 2]  # in the order they asked
    at = [n for _, n in answered]
    assert at[0] < at[1] < at[2]
    late = await cache.get(lambda: snap, "v", render)  # alone: answered at once
    assert late is results[0] and render.calls == ["x"]


async def test_a_reader_gone_while_waiting_for_its_turn_passes_it_on() -> None:
    cache, snap = Renderings(), Snap("x")
    render = Renderer(hold=threading.Event())
    readers = [asyncio.create_task(cache.get(lambda: snap, "v", render)) for _ in range(3)]
    # The second one's client hangs up as the first one is answered (the second one waits).
    readers[0].add_done_callback(lambda _: readers[1].cancel())
    await asyncio.to_thread(render.started.wait, 10)
    assert render.hold is not None
    render.hold.set()
    async with asyncio.timeout(5):  # the turn passed on, not held forever
        assert (await readers[2]).parts == (b"x",)
    with pytest.raises(asyncio.CancelledError):
        await readers[1]


async def test_a_scrape_joins_the_rendering_under_way_even_for_a_newer_snapshot() -> None:
    cache = Renderings()
    render = Renderer(hold=threading.Event())
    snaps = iter([Snap("old"), Snap("new"), Snap("newer"), Snap("newest")])
    first = asyncio.create_task(cache.get(lambda: next(snaps), "m", render, join=True))
    await asyncio.to_thread(render.started.wait, 10)
    joined = asyncio.create_task(cache.get(lambda: next(snaps), "m", render, join=True))
    strict = asyncio.create_task(cache.get(lambda: next(snaps), "m", render))
    await asyncio.sleep(0)  # both asked while "old" was still being rendered
    assert render.hold is not None
    render.hold.set()
    assert (await first).parts == (await joined).parts == (b"old",)
    assert (await strict).parts == (b"new",)  # without join: the snapshot of its own time
    after = await cache.get(lambda: next(snaps), "m", render, join=True)
    assert after.parts == (b"newer",)  # nothing under way any more
    assert render.calls == ["old", "new", "newer"]


async def test_a_failed_rendering_is_not_kept() -> None:
    cache, snap = Renderings(), Snap("x")
    render = Renderer(fail=True)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="render bug"):
            await cache.get(lambda: snap, "v", render)
    assert render.calls == ["x", "x"]
    render.fail = False
    assert (await cache.get(lambda: snap, "v", render)).parts == (b"x",)


async def test_a_reader_that_goes_away_leaves_the_rendering_to_the_others() -> None:
    cache, snap = Renderings(), Snap("x")
    render = Renderer(hold=threading.Event())
    gone = asyncio.create_task(cache.get(lambda: snap, "v", render))
    await asyncio.to_thread(render.started.wait, 10)
    stays = asyncio.create_task(cache.get(lambda: snap, "v", render))
    await asyncio.sleep(0)
    gone.cancel()  # a client that hung up
    assert render.hold is not None
    render.hold.set()
    assert (await stays).parts == (b"x",)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert render.calls == ["x"]


class Row:
    """A row as the core shares them: an object that stands for its values until replaced."""

    def __init__(self, value: str) -> None:
        self.value = value


def test_rows_are_written_once_per_object_and_kept_by_a_rendering_of_every_row() -> None:
    written: list[str] = []

    def write(row: Row, service: str) -> str:
        written.append(row.value)
        return f"{service}/{row.value}"

    rows: Rows[Row, str, str] = Rows(write)
    a, b, c = Row("a"), Row("b"), Row("c")
    every = rows.writer(every_row=True)
    assert [every(a, "web"), every(b, "web")] == ["web/a", "web/b"]
    few = rows.writer(every_row=False)  # one service's rows: read, nothing kept
    assert [few(a, "web"), few(c, "web")] == ["web/a", "web/c"]
    b2 = Row("b2")  # b's record changed: a new object
    every = rows.writer(every_row=True)
    assert [every(a, "web"), every(b2, "web"), every(c, "web")] == ["web/a", "web/b2", "web/c"]
    every = rows.writer(every_row=True)
    assert [every(a, "web"), every(b2, "web")] == ["web/a", "web/b2"]
    assert written == ["a", "b", "c", "b2", "c"]
