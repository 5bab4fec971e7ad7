"""One target's probe for its whole life: built from its check, run on its schedule, and
guarded so that a probe bug fails its target instead of ending the agent."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from anycast_agent.config import DnsCheck, ExecCheck, HttpCheck, TcpCheck
from anycast_agent.core.spec import TargetSpec
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.base import CallbackProbe, Probe, is_callback_probe
from anycast_agent.probes.schedule import CallbackSchedule, run_schedule

log = logging.getLogger("anycast_agent")

CHECKS = (HttpCheck, TcpCheck, ExecCheck, DnsCheck)


class Running(Protocol):
    """A target's probing, as `start_probe` started it: a task or a `CallbackSchedule`."""

    def cancel(self) -> object: ...


def start_probe(
    factory: ProbeFactory,
    target: TargetSpec,
    label: str,
    tg: asyncio.TaskGroup,
    *,
    on_result: Callable[[ProbeResult], None],
    on_skip: Callable[[int], None],
) -> Running:
    """Probe `target` every interval until cancelled, reporting each result. A callback probe
    runs on the engine's timers alone (no task); any other runs as a task in `tg`. Either
    way an exception that escapes the probe's guard (a bug in the caller's `on_result`) ends
    `tg` with it, as a failing task does."""
    check, interval_s, timeout_s = target.check, target.interval_s, target.timeout_s
    try:
        if not isinstance(check, CHECKS):
            raise TypeError(f"not a check: {check!r}")
        built: Probe = factory.build(check, timeout_s)
    except Exception as exc:  # a check the config let through but no probe can run
        log.exception("target %s cannot be probed: it counts as failing", label)
        built = _Broken(f"cannot probe: {exc}")
    # A random phase spreads the targets over the interval: no thundering herd at each second.
    phase_s = random.uniform(0, interval_s * 0.999)
    if not is_callback_probe(built):
        return tg.create_task(
            _run(factory, built, label, interval_s, on_result, on_skip, phase_s),
            name=f"probe:{label}",
        )
    run = _CallbackRun(factory, built, tg, label)
    run.schedule = CallbackSchedule(
        factory.engine,
        _GuardedCallback(built, label),
        interval_s,
        on_result,
        on_error=run.fail,
        on_skip=on_skip,
        phase_s=phase_s,
    )
    run.schedule.start()
    return run


async def _run(
    factory: ProbeFactory,
    built: Probe,
    label: str,
    interval_s: float,
    on_result: Callable[[ProbeResult], None],
    on_skip: Callable[[int], None],
    phase_s: float,
) -> None:
    try:
        await run_schedule(
            _Guarded(built, label), interval_s, on_result, on_skip=on_skip, phase_s=phase_s
        )
    finally:
        factory.release(built)


class _CallbackRun:
    """A callback probe's schedule, and what ending it frees."""

    __slots__ = ("_factory", "_label", "_probe", "_tg", "schedule")

    schedule: CallbackSchedule

    def __init__(
        self, factory: ProbeFactory, probe: CallbackProbe, tg: asyncio.TaskGroup, label: str
    ) -> None:
        self._factory, self._probe, self._tg, self._label = factory, probe, tg, label

    def cancel(self) -> None:
        self.schedule.cancel()
        self._factory.release(self._probe)

    def fail(self, exc: Exception) -> None:
        self._factory.release(self._probe)
        self._tg.create_task(_reraise(exc), name=f"probe:{self._label}")


async def _reraise(exc: Exception) -> None:
    raise exc


class _Guarded:
    """A probe bug fails its target instead of ending the agent (and, through ExaBGP's respawn
    limit, withdrawing the whole PoP). Logged with its traceback once per target."""

    __slots__ = ("label", "logged", "probe")

    def __init__(self, probe: Probe, label: str) -> None:
        self.probe = probe
        self.label = label
        self.logged = False

    async def check(self) -> ProbeResult:
        try:
            return await self.probe.check()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._error(exc)

    def _error(self, exc: Exception) -> ProbeResult:
        if not self.logged:
            log.error("probe of %s failed unexpectedly", self.label, exc_info=exc)
            self.logged = True
        return ProbeResult(ok=False, latency_s=0.0, reason=f"probe error: {exc!r}", bug=True)


class _GuardedCallback(_Guarded):
    """_Guarded for a CallbackProbe: a `start` that raises fails this check, not the schedule."""

    __slots__ = ()

    probe: CallbackProbe

    def __init__(self, probe: CallbackProbe, label: str) -> None:
        super().__init__(probe, label)

    def start(self, done: Callable[[ProbeResult], None]) -> None:
        # If `start` reported before raising, the schedule ignores this second report.
        try:
            self.probe.start(done)
        except Exception as exc:
            self.probe.abort()
            done(self._error(exc))

    def abort(self) -> None:
        self.probe.abort()


class _Broken:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def check(self) -> ProbeResult:
        return ProbeResult(ok=False, latency_s=0.0, reason=self.reason, bug=True)
