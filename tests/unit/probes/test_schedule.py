"""The probe clock: a fake clock for exact grids, then a short real-time run."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from anycast_agent.model import ProbeResult
from anycast_agent.probes.engine import Engine
from anycast_agent.probes.schedule import CallbackSchedule, run_schedule

Driver = Callable[..., Awaitable[Any]]


class Stop(Exception):
    """Raised from on_result to end a run after enough results."""


class FakeTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        assert delay_s >= 0
        self.now += delay_s
        await asyncio.sleep(0)


class ScriptedProbe:
    """Takes durations_s[i] (fake seconds) for its i-th check; records when each check began."""

    def __init__(self, fake: FakeTime, durations_s: Sequence[float]) -> None:
        self.fake = fake
        self.durations_s = durations_s
        self.starts: list[float] = []

    async def check(self) -> ProbeResult:
        i = len(self.starts)
        self.starts.append(self.fake.now)
        self.fake.now += self.durations_s[i % len(self.durations_s)]
        return ProbeResult(ok=i % 2 == 0, latency_s=self.durations_s[i % len(self.durations_s)])


async def run_fake(
    durations_s: Sequence[float],
    results: int,
    *,
    interval_s: float = 1.0,
    jitter: float = 0.1,
    seed: int = 7,
) -> tuple[list[float], list[ProbeResult], list[int]]:
    """Start offsets from t0, the results handed to on_result, and the on_skip counts."""
    fake = FakeTime()
    t0 = fake.now
    probe = ScriptedProbe(fake, durations_s)
    seen: list[ProbeResult] = []
    skips: list[int] = []

    def on_result(result: ProbeResult) -> None:
        seen.append(result)
        if len(seen) == results:
            raise Stop

    with pytest.raises(Stop):
        await run_schedule(
            probe,
            interval_s,
            on_result,
            jitter=jitter,
            clock=fake.clock,
            rng=random.Random(seed),
            sleep=fake.sleep,
            on_skip=skips.append,
        )
    return [s - t0 for s in probe.starts], seen, skips


@pytest.mark.parametrize(
    "duration_s", [0.0, 0.3, 0.8]
)  # 0.8 + 0.1 jitter still ends before the next slot
async def test_slots_do_not_drift(duration_s: float) -> None:
    offsets, _, skips = await run_fake([duration_s], 21)
    assert offsets[0] == 0.0  # the first probe starts at once
    for k, offset in enumerate(offsets[1:], start=1):
        assert k <= offset < k + 0.1, f"slot {k} started at +{offset:.6f}s"
    assert skips == []


async def test_jitter_stays_within_bounds_and_varies() -> None:
    offsets, _, _ = await run_fake([0.0], 200, interval_s=2.0, jitter=0.1)
    jitters = [offset - 2.0 * k for k, offset in enumerate(offsets)]
    assert all(0.0 <= j < 0.2 for j in jitters)
    assert max(jitters[1:]) - min(jitters[1:]) > 0.1  # spread over most of the window
    assert len({round(j, 9) for j in jitters[1:]}) > 150


async def test_zero_jitter_is_an_exact_grid() -> None:
    offsets, _, _ = await run_fake([0.25], 10, interval_s=0.5, jitter=0.0)
    assert offsets == [0.5 * k for k in range(10)]


async def test_overrun_skips_slots_instead_of_queueing() -> None:
    # The third check (slot 2) takes 2.5 s: slots 3 and 4 pass while it runs.
    offsets, _, skips = await run_fake([0.0, 0.0, 2.5, 0.0, 0.0], 5)
    slots = [int(o) for o in offsets]
    assert slots == [0, 1, 2, 5, 6]
    assert skips == [2]
    assert all(0 <= o - s < 0.1 for o, s in zip(offsets, slots, strict=True))


async def test_overrun_into_a_late_jittered_slot_keeps_that_slot() -> None:
    # Ends at +1.0 + j1 + 0.02: slot 2 (at +2.0 + j2) is still ahead, so nothing is skipped;
    # ending after the latest possible start of slot 2 skips exactly it.
    offsets, _, skips = await run_fake([0.0, 1.02], 3, jitter=0.0)
    assert offsets == [0.0, 1.0, 3.0]
    assert skips == [1]
    offsets, _, skips = await run_fake([0.0, 0.99], 3, jitter=0.0)
    assert offsets == [0.0, 1.0, 2.0]
    assert skips == []


async def test_on_result_gets_every_result_in_order() -> None:
    _, seen, _ = await run_fake([0.1, 0.2, 0.3], 6)
    assert [r.ok for r in seen] == [True, False] * 3
    assert [r.latency_s for r in seen] == [0.1, 0.2, 0.3] * 2


@pytest.mark.parametrize(
    ("interval_s", "jitter"), [(0.0, 0.1), (-1.0, 0.1), (1.0, 1.0), (1.0, -0.1)]
)
async def test_bad_arguments(interval_s: float, jitter: float) -> None:
    fake = FakeTime()
    with pytest.raises(ValueError):
        await run_schedule(ScriptedProbe(fake, [0.0]), interval_s, lambda r: None, jitter=jitter)


class SlowRealProbe:
    """Real time: takes duration_s per check and records overlap. Both a coroutine probe and a
    CallbackProbe, so each real-time test runs under both drivers."""

    def __init__(self, durations_s: Sequence[float]) -> None:
        self.durations_s = durations_s
        self.starts: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.aborted = 0
        self.began = asyncio.Event()
        self._pending: asyncio.TimerHandle | None = None

    def _begin(self) -> float:
        self.starts.append(time.monotonic())
        self.began.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return self.durations_s[(len(self.starts) - 1) % len(self.durations_s)]

    async def check(self) -> ProbeResult:
        duration_s = self._begin()
        try:
            await asyncio.sleep(duration_s)
        finally:
            self.in_flight -= 1
        return ProbeResult(ok=True, latency_s=0.0)

    def start(self, done: Callable[[ProbeResult], None]) -> None:
        def end() -> None:
            self._pending = None
            self.in_flight -= 1
            done(ProbeResult(ok=True, latency_s=0.0))

        self._pending = asyncio.get_running_loop().call_later(self._begin(), end)

    def abort(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
            self.in_flight -= 1
            self.aborted += 1


async def on_engine(probe: SlowRealProbe, *args: Any, **kw: Any) -> None:
    """A CallbackSchedule on an engine of its own, awaited as a coroutine: until cancelled,
    or until it ends with an error (raised here); the engine is closed when it ends."""
    engine = Engine()
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    schedule = CallbackSchedule(engine, probe, *args, on_error=ended.set_exception, **kw)
    schedule.start()
    try:
        await ended
    finally:
        schedule.cancel()
        engine.close()


DRIVERS = [pytest.param(run_schedule, id="coroutine"), pytest.param(on_engine, id="callback")]


async def run_real(
    driver: Driver, probe: SlowRealProbe, results: int, interval_s: float
) -> tuple[float, list[int], list[float]]:
    skips: list[int] = []
    lateness: list[float] = []
    count = 0

    def on_result(_: ProbeResult) -> None:
        nonlocal count
        count += 1
        if count == results:
            raise Stop

    t0 = time.monotonic()
    with pytest.raises(Stop):
        await asyncio.wait_for(
            driver(
                probe,
                interval_s,
                on_result,
                jitter=0.1,
                on_skip=skips.append,
                on_start=lateness.append,
            ),
            10,
        )
    return t0, skips, lateness


@pytest.mark.parametrize("driver", DRIVERS)
async def test_real_time_grid_holds_over_20_slots(driver: Driver) -> None:
    interval_s = 0.05
    probe = SlowRealProbe([0.01])  # a naive sleep-after-probe loop would lose 10 ms a slot
    t0, skips, lateness = await run_real(driver, probe, 21, interval_s)
    for k, start in enumerate(probe.starts):
        late = start - (t0 + k * interval_s)
        assert -0.001 <= late < 0.1 * interval_s + 0.02, f"slot {k} is {late * 1000:.1f} ms late"
    assert skips == []
    assert len(lateness) == len(probe.starts)
    # Against the jittered slot; generous, as the machine may be busy (the grid check above is
    # the precise one).
    assert all(0 <= late < 0.05 for late in lateness), lateness


@pytest.mark.parametrize("driver", DRIVERS)
async def test_real_time_one_probe_in_flight_and_skips(driver: Driver) -> None:
    interval_s = 0.05
    probe = SlowRealProbe([0.12, 0.0])  # every other check overruns two slots
    t0, skips, _ = await run_real(driver, probe, 6, interval_s)
    assert probe.max_in_flight == 1
    assert sum(skips) >= 6
    for start in probe.starts:
        late = (start - t0) % interval_s
        assert late < 0.1 * interval_s + 0.02, f"a check started {late * 1000:.1f} ms off-grid"


async def test_cancel_ends_the_schedule() -> None:
    started = asyncio.Event()

    class Probe:
        async def check(self) -> ProbeResult:
            started.set()
            return ProbeResult(ok=True, latency_s=0.0)

    task = asyncio.create_task(run_schedule(Probe(), 30.0, lambda r: None))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_aborts_the_callback_probe_in_flight() -> None:
    probe = SlowRealProbe([30.0])  # never finishes on its own
    task = asyncio.create_task(on_engine(probe, 60.0, lambda r: None))
    await asyncio.wait_for(probe.began.wait(), 5)
    assert probe.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (probe.aborted, probe.in_flight) == (1, 0)


async def test_a_callback_probe_that_raises_ends_the_schedule_with_its_error() -> None:
    class Broken(SlowRealProbe):
        def start(self, done: Callable[[ProbeResult], None]) -> None:
            raise RuntimeError("bug in start")

    with pytest.raises(RuntimeError, match="bug in start"):
        await asyncio.wait_for(on_engine(Broken([0.0]), 1.0, lambda r: None), 5)


async def test_a_callback_probe_that_reports_twice_is_heard_once_per_start() -> None:
    class Twice(SlowRealProbe):
        def start(self, done: Callable[[ProbeResult], None]) -> None:
            self._begin()
            self.in_flight -= 1
            done(ProbeResult(ok=True, latency_s=0.0))
            done(ProbeResult(ok=False, latency_s=0.0, reason="a second report"))

    probe = Twice([0.0])
    seen: list[ProbeResult] = []

    def on_result(result: ProbeResult) -> None:
        seen.append(result)
        if len(probe.starts) == 5:
            raise Stop

    with pytest.raises(Stop):
        await asyncio.wait_for(on_engine(probe, 0.02, on_result), 5)
    assert len(seen) == len(probe.starts) == 5
    assert all(r.ok for r in seen)
