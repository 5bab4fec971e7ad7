"""The agent as `anycast-agent run --dry-run` runs it, plus a probe-clock recorder (bench only).

Started inside the bench namespace by `bench.probe_scale`. The only difference from the CLI
is that each target's schedule reports to a recorder how late each probe started against its
slot (its `on_start` hook: one clock read per probe), and the run ends itself after
`--warmup` + `--window` seconds, writing what it measured over the window to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anycast_agent.probes.runner as runner_module
from anycast_agent import logs
from anycast_agent.agent import Agent
from anycast_agent.config import load_config
from anycast_agent.control.server import ControlServer
from anycast_agent.model import ProbeResult
from anycast_agent.probes.schedule import CallbackSchedule, run_schedule
from anycast_agent.speaker.dry_run import DryRunSpeaker


@dataclass
class Recorder:
    """Probe-clock facts over the measuring window (nothing is kept before it opens)."""

    open: bool = False
    stamps: bool = False  # also keep when each probe started (monotonic), for phased benches
    # Arrays of doubles, not lists of floats: 8 bytes a sample instead of 32, so the figures
    # kept over the window add little to the RSS the run reports as the agent's.
    lateness_s: array[float] = field(default_factory=lambda: array("d"))
    started_at: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    started: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def result(self, result: ProbeResult) -> None:
        if not self.open:
            return
        self.latency_s.append(result.latency_s)
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
            key = result.reason.split(" [", 1)[0][:80]
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def skip(self, slots: int) -> None:
        if self.open:
            self.skipped += slots

    def start(self, late_s: float) -> None:
        if self.open:
            self.lateness_s.append(late_s)
            self.started += 1
            if self.stamps:
                self.started_at.append(time.monotonic())


RECORDER = Recorder()
R = TypeVar("R")


def recording(schedule: Callable[..., R]) -> Callable[..., R]:
    """`schedule` (either probe driver) with the recorder on its result, skip and start hooks."""

    def wrapped(*args: Any, **kw: Any) -> R:
        *leading, on_result = args  # the runner passes on_result last of the positionals
        agent_on_skip: Callable[[int], None] | None = kw.pop("on_skip", None)

        def on_both(result: ProbeResult) -> None:
            RECORDER.result(result)
            on_result(result)

        def on_skip(slots: int) -> None:
            RECORDER.skip(slots)
            if agent_on_skip is not None:
                agent_on_skip(slots)

        return schedule(*leading, on_both, on_skip=on_skip, on_start=RECORDER.start, **kw)

    return wrapped


def _cpu_s() -> tuple[float, float]:
    t = os.times()
    return t.user, t.system


async def _main(config_path: Path, warmup_s: float, window_s: float) -> dict[str, object]:
    config = load_config(config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config, DryRunSpeaker(lambda line: print(line, flush=True)), dry_run=True)
    # As `run` does: the control endpoint (status, metrics) in the same loop as the probes.
    agent.control = ControlServer.from_config(
        agent, config.control, config.state_dir, ephemeral=True
    )
    measured: dict[str, object] = {}

    async def measure() -> None:
        await asyncio.sleep(warmup_s)
        RECORDER.open = True
        cpu0, t0 = _cpu_s(), time.monotonic()
        await asyncio.sleep(window_s)
        cpu1, t1 = _cpu_s(), time.monotonic()
        RECORDER.open = False
        user_s, sys_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        measured.update(cpu_s=user_s + sys_s, user_s=user_s, sys_s=sys_s, wall_s=t1 - t0)
        stop.set()

    task = asyncio.create_task(measure(), name="bench:measure")
    code = await agent.run(stop)
    task.cancel()
    measured.update(
        started=RECORDER.started,
        ok=RECORDER.ok,
        failed=RECORDER.failed,
        skipped=RECORDER.skipped,
        reasons=RECORDER.reasons,
        lateness_s=RECORDER.lateness_s,
        started_at=RECORDER.started_at,
        latency_s=RECORDER.latency_s,
        exit_code=code,
    )
    return measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument(
        "--stamps", action="store_true", help="also write when each probe started (monotonic)"
    )
    args = p.parse_args(argv)
    logs.setup(args.log_level)
    RECORDER.stamps = args.stamps
    runner_module.run_schedule = recording(run_schedule)
    runner_module.CallbackSchedule = recording(CallbackSchedule)  # type: ignore[misc]
    measured = asyncio.run(_main(args.config, args.warmup, args.window))
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    measured.update(
        rss_hwm_kib=int(status["VmHWM"].split()[0]), rss_kib=int(status["VmRSS"].split()[0])
    )
    args.out.write_text(json.dumps(measured, default=list))  # the arrays, after the RSS read
    return int(str(measured["exit_code"]))


if __name__ == "__main__":
    sys.exit(main())
