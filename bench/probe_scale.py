"""Probe-scale bench: N HTTP targets on nginx, the agent (dry run) and two baselines (ExaBGP's
healthcheck, HAProxy's checks)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import run_baseline
from bench.haproxy import run_haproxy
from bench.nginx import Nginx
from bench.sandbox import Sandbox
from bench.stats import ms, percentile
from bench.targets import Timing, agent_config, write_config

AGENT_EXIT_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class ScalePlan:
    sizes: tuple[int, ...]
    modes: tuple[str, ...]  # "fresh", "keepalive"
    baseline_sizes: tuple[int, ...]
    warmup_s: float
    window_s: float
    baseline_warmup_s: float
    python: str
    haproxy_sizes: tuple[int, ...] = ()


def run_agent(box: Sandbox, work: Path, n: int, mode: str, plan: ScalePlan) -> dict[str, object]:
    """One agent run over the window; the row of figures it measured."""
    state = work / f"state-{mode}-{n}"
    state.mkdir(parents=True, exist_ok=True)
    config = write_config(
        work / f"agent-{mode}-{n}.yaml",
        agent_config(n, state, keepalive=mode == "keepalive"),
    )
    out = work / f"agent-{mode}-{n}.json"
    argv = [
        plan.python, "-m", "bench.agent_proc",
        "--config", str(config),
        "--warmup", f"{plan.warmup_s:g}",
        "--window", f"{plan.window_s:g}",
        "--out", str(out),
    ]  # fmt: skip
    proc = box.spawn(argv, stderr=work / f"agent-{mode}-{n}.log")
    try:
        proc.wait(plan.warmup_s + plan.window_s + AGENT_EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        box.stop(proc)
        raise RuntimeError(f"the agent ({mode}, N={n}) did not finish; see its log") from None
    if not out.exists():
        raise RuntimeError(f"the agent ({mode}, N={n}) exited {proc.returncode} without figures")
    d = json.loads(out.read_text())
    lateness = d["lateness_s"]
    probes = d["started"]
    wall_s = d["wall_s"]
    return {
        "engine": "anycast-agent",
        "mode": mode,
        "n": n,
        "window_s": round(wall_s, 2),
        "probes": probes,
        "probes_per_s": round(probes / wall_s, 1),
        "cpu_s": round(d["cpu_s"], 3),
        "cpu_ms_per_probe": round(1000 * d["cpu_s"] / probes, 3) if probes else None,
        "cpu_pct_one_core": round(100 * d["cpu_s"] / wall_s, 1),
        "cpu_sys_share": round(d["sys_s"] / d["cpu_s"], 2) if d["cpu_s"] else None,
        "rss_mib": round(d["rss_hwm_kib"] / 1024, 1),
        "jitter_p50_ms": ms(percentile(lateness, 50)),
        "jitter_p99_ms": ms(percentile(lateness, 99)),
        "missed_slots": d["skipped"],
        "failed": d["failed"],
        "failure_reasons": d["reasons"],
        "latency_p50_ms": ms(percentile(d["latency_s"], 50)),
        "latency_p99_ms": ms(percentile(d["latency_s"], 99)),
    }


def run_probe_scale(work: Path, plan: ScalePlan) -> list[dict[str, object]]:
    """The healthcheck baseline sizes, then per size HAProxy (if asked at that size) and every
    agent mode right after it, against one nginx in one namespace."""
    rows: list[dict[str, object]] = []
    with Sandbox("scale") as box:
        nginx = Nginx(box, work / "nginx")
        nginx.start()
        for n in plan.baseline_sizes:
            rows.append(
                run_baseline(
                    box,
                    nginx,
                    n,
                    python=plan.python,
                    timing=Timing(),
                    warmup_s=plan.baseline_warmup_s,
                    window_s=plan.window_s,
                )
            )
            print(f"  baseline N={n}: done", flush=True)
        for n in sorted({*plan.sizes, *plan.haproxy_sizes}):
            if n in plan.haproxy_sizes:
                rows.append(
                    run_haproxy(
                        box,
                        nginx,
                        work,
                        n,
                        timing=Timing(),
                        warmup_s=plan.warmup_s,
                        window_s=plan.window_s,
                    )
                )
                print(f"  haproxy N={n}: done", flush=True)
            if n not in plan.sizes:
                continue
            for mode in plan.modes:
                rows.append(run_agent(box, work, n, mode, plan))
                print(f"  agent {mode} N={n}: done", flush=True)
    return rows
