"""The knee: the largest N at which the agent (one process, so one core) still holds probe
jitter p99 < 50 ms with no missed slot and no failed probe, per mode.

Each step is one probe-scale run of the agent (`bench.probe_scale.run_agent`, same nginx, same
recorder) at N targets, interval 1 s. The search grows N by `growth` from `start` until a step
fails or `ceiling` is reached, then halves the gap between the largest passing and the
smallest failing N until they are within `resolution` of each other; never more than
`max_runs` steps per mode. On this machine nginx and the agent share two cores with whatever
else runs, so the knee found is the machine's as much as the agent's: each step's CPU share is
reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.nginx import Nginx
from bench.probe_scale import ScalePlan, run_agent
from bench.sandbox import Sandbox

JITTER_P99_LIMIT_MS = 50.0
STEP_ROUNDING = 100  # N is rounded to this while bisecting (to 1 below it)


@dataclass(frozen=True, slots=True)
class KneePlan:
    python: str
    modes: tuple[str, ...] = ("keepalive", "fresh")
    start: int = 2000
    # nginx here holds at most 8,192 connections: keep-alive needs one per target.
    ceiling: int = 8000
    growth: float = 1.5
    resolution: float = 0.1  # stop when the smallest failing N is within 10 % of the passing
    max_runs: int = 7
    warmup_s: float = 4.0
    window_s: float = 10.0


def verdict(row: dict[str, Any]) -> str:
    """ "" when the step holds, else why not."""
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    why = []
    p99 = row.get("jitter_p99_ms")
    if p99 is None or p99 >= JITTER_P99_LIMIT_MS:
        why.append(f"jitter p99 {p99} ms")
    if row.get("missed_slots"):
        why.append(f"{row['missed_slots']} missed slots")
    if row.get("failed"):
        why.append(f"{row['failed']} failed probes")
    return ", ".join(why)


def _round(n: int) -> int:
    return max(1, round(n / STEP_ROUNDING) * STEP_ROUNDING) if n >= STEP_ROUNDING else n


def search(measure: Callable[[int], dict[str, Any]], plan: KneePlan) -> dict[str, Any]:
    """The knee of one mode, `measure(n)` being one step's row."""
    passing: int | None = None
    failing: int | None = None
    steps: list[dict[str, Any]] = []
    n = plan.start
    ended = "max_runs"
    while len(steps) < plan.max_runs:
        row = measure(n)
        why = verdict(row)
        steps.append({"n": n, "holds": not why, "why": why, **_figures(row)})
        if why:
            failing = n if failing is None else min(failing, n)
        else:
            passing = n if passing is None else max(passing, n)
        if failing is None:  # still growing
            if n >= plan.ceiling:
                ended = "ceiling"
                break
            n = min(plan.ceiling, _round(int(n * plan.growth)))
        elif passing is None:  # even the start failed: look below it
            if n <= 1:
                ended = "nothing holds"
                break
            n = _round(n // 2) if n // 2 >= STEP_ROUNDING else n // 2
        else:
            if failing <= passing * (1 + plan.resolution):
                ended = "resolution"
                break
            n = _round((passing + failing) // 2)
            if n in (passing, failing):  # rounding leaves nothing between them
                ended = "resolution"
                break
    return {"knee": passing, "first_failing": failing, "ended_by": ended, "steps": steps}


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("cpu_pct_one_core", "cpu_ms_per_probe", "jitter_p50_ms", "jitter_p99_ms",
            "missed_slots", "failed", "rss_mib", "probes_per_s")  # fmt: skip
    return {k: row.get(k) for k in keys}


def run_knee(work: Path, plan: KneePlan) -> dict[str, Any]:
    """Every mode's search against one nginx in one namespace."""
    scale = ScalePlan(
        sizes=(),
        modes=plan.modes,
        baseline_sizes=(),
        warmup_s=plan.warmup_s,
        window_s=plan.window_s,
        baseline_warmup_s=0.0,
        python=plan.python,
    )
    out: dict[str, Any] = {
        "limit": f"jitter p99 < {JITTER_P99_LIMIT_MS:g} ms, no missed slot, no failed probe",
        "interval_s": 1.0,
        "ceiling": plan.ceiling,
        "warmup_s": plan.warmup_s,
        "window_s": plan.window_s,
        "modes": {},
    }
    with Sandbox("knee") as box:
        nginx = Nginx(box, work / "nginx-knee")
        nginx.start()
        for mode in plan.modes:

            def measure(n: int, mode: str = mode) -> dict[str, Any]:
                row = run_agent(box, work / f"knee-{mode}", n, mode, scale)
                print(f"  knee {mode} N={n}: {verdict(row) or 'holds'}", flush=True)
                return row

            (work / f"knee-{mode}").mkdir(parents=True, exist_ok=True)
            out["modes"][mode] = search(measure, plan)
    return out
