"""ExaBGP's healthcheck as operators run it: one process per check, `curl` every interval."""

from __future__ import annotations

import importlib.metadata
import subprocess
import time

from bench.nginx import Nginx
from bench.procstat import Usage, cost, mem_available_kib, usage
from bench.sandbox import Sandbox
from bench.targets import Timing, target_url

# Measured here: one healthcheck process holds ~14 MB; keep a margin for curl and the rest.
PER_PROCESS_KIB = 20 * 1024
MEMORY_RESERVE_KIB = 1024 * 1024


def healthcheck_argv(python: str, url: str, timing: Timing, index: int) -> list[str]:
    """The healthcheck command for one target (4.2 and 5.0 expose it differently)."""
    version = importlib.metadata.version("exabgp")
    module = (
        ["-m", "exabgp", "healthcheck"]
        if not version.startswith("4.")
        else [
            "-m",
            "exabgp.application.healthcheck",
        ]
    )
    curl = f"curl -sf -o /dev/null -m {timing.timeout_s:g} {url}"
    return [
        python,
        *module,
        "--no-syslog",
        "--no-ack",  # no ExaBGP here to acknowledge; with one it would read its acks
        "--no-ip-setup",
        "--ip",
        f"203.0.113.{index % 250 + 1}/32",
        "--interval",
        f"{timing.interval_s:g}",
        "--fast-interval",
        f"{timing.interval_s:g}",
        "--timeout",
        str(max(1, round(timing.timeout_s))),  # whole seconds (signal.alarm)
        "--rise",
        str(timing.rise),
        "--fall",
        str(timing.fall),
        "--cmd",
        curl,
    ]


def allowed(n: int) -> tuple[int, str]:
    """How many healthcheck processes free memory allows (never more than n), and why."""
    room = (mem_available_kib() - MEMORY_RESERVE_KIB) // PER_PROCESS_KIB
    if room >= n:
        return n, ""
    return max(0, room), f"memory allows only {max(0, room)} of {n} healthcheck processes"


def run_baseline(
    box: Sandbox,
    nginx: Nginx,
    n: int,
    *,
    python: str,
    timing: Timing,
    warmup_s: float,
    window_s: float,
) -> dict[str, object]:
    """Start n healthcheck processes, measure them over the window, stop them."""
    count, note = allowed(n)
    row: dict[str, object] = {"engine": "exabgp-healthcheck", "mode": "curl", "n": n}
    if count < n:
        row["skipped"] = note
        return row
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            procs.append(box.spawn(healthcheck_argv(python, target_url(i), timing, i)))
        time.sleep(warmup_s)
        before = _total(procs)
        wall0, t0 = time.time(), time.monotonic()
        time.sleep(window_s)
        after = _total(procs)
        wall1, t1 = time.time(), time.monotonic()
        time.sleep(1.2)  # nginx flushes its access log every second
        probes = nginx.requests(wall0, wall1)
        alive = sum(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            box.stop(proc)
    if alive < n // 2:
        row["skipped"] = f"only {alive} of {n} healthcheck processes stayed up"
        return row
    row.update(cost(before, after, probes, t1 - t0))
    row.update(
        rss_mib_per_process=round(after.hwm_kib / 1024 / n, 1),
        processes_alive=alive,
        jitter_p50_ms=None,
        jitter_p99_ms=None,
        missed_slots=None,
        note="its loop sleeps `interval` after each check, so its period drifts "
        "(probes_per_s < n); probes counted at nginx"
        + (
            f"; {n - alive} of {n} processes died during the run (their CPU may be "
            "uncounted, which only lowers the baseline's cost per probe)"
            if alive < n
            else ""
        ),
    )
    return row


def _total(procs: list[subprocess.Popen[bytes]]) -> Usage:
    cpu, rss, hwm, sys = 0.0, 0, 0, 0.0
    for proc in procs:
        try:
            u = usage(proc.pid)
        except FileNotFoundError:
            continue
        cpu, rss, hwm, sys = cpu + u.cpu_s, rss + u.rss_kib, hwm + u.hwm_kib, sys + u.sys_s
    return Usage(cpu, rss, hwm, sys)


def exabgp_version() -> str:
    return importlib.metadata.version("exabgp")
