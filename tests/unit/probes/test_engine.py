"""The probe engine: timers never early and in order, readiness callbacks, contained errors."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from anycast_agent.probes.engine import READ, SLACK_S, Engine


async def test_timers_run_in_time_order_never_early_and_within_the_slack() -> None:
    engine = Engine()
    fired: list[tuple[str, float, float]] = []
    done = asyncio.Event()
    t0 = engine.time()

    def note(arg: tuple[str, float]) -> None:
        name, when = arg
        fired.append((name, when, engine.time()))
        if len(fired) == 3:
            done.set()

    for name, delay in (("c", 0.06), ("a", 0.02), ("b", 0.04)):
        engine.call_at(t0 + delay, note, (name, t0 + delay))
    await asyncio.wait_for(done.wait(), 5)
    engine.close()
    assert [name for name, _, _ in fired] == ["a", "b", "c"]
    for name, when, at in fired:
        assert when <= at < when + SLACK_S + 0.05, f"{name} ran {1000 * (at - when):.1f} ms late"


async def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    engine = Engine()
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    ran = asyncio.Event()

    def boom(_: object) -> None:
        raise ValueError("bad callback")

    now = engine.time()
    engine.call_at(now, boom)
    engine.call_at(now, lambda _: ran.set())
    await asyncio.wait_for(ran.wait(), 5)
    engine.close()
    loop.set_exception_handler(None)
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], ValueError)


async def test_watch_calls_back_while_readable_and_unwatch_stops_it() -> None:
    engine = Engine()
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    readable = asyncio.Event()

    def on_ready(events: int) -> None:
        assert events & READ
        got.append(a.recv(100))
        readable.set()

    engine.watch(a.fileno(), READ, on_ready)
    b.send(b"ping")
    await asyncio.wait_for(readable.wait(), 5)
    engine.unwatch(a.fileno())
    b.send(b"unseen")
    await asyncio.sleep(0.05)  # nothing to wait for: proving a callback does not come
    engine.close()
    a.close()
    b.close()
    assert got == [b"ping"]
