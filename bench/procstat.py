"""CPU time and memory of a process read from /proc (children it reaped included)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_s: float  # user + system, own and reaped children's
    rss_kib: int  # resident now
    hwm_kib: int  # peak resident
    sys_s: float = 0.0  # the system part of cpu_s (the kernel's work on the process's behalf)


def cost(before: Usage, after: Usage, probes: int, wall_s: float) -> dict[str, object]:
    """A baseline row's figures over one window: probes, CPU (per probe, of one core, the
    kernel's share) and peak memory."""
    cpu_s = after.cpu_s - before.cpu_s
    return {
        "window_s": round(wall_s, 2),
        "probes": probes,
        "probes_per_s": round(probes / wall_s, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_probe": round(1000 * cpu_s / probes, 3) if probes else None,
        "cpu_pct_one_core": round(100 * cpu_s / wall_s, 1),
        "cpu_sys_share": round((after.sys_s - before.sys_s) / cpu_s, 2) if cpu_s else None,
        "rss_mib": round(after.hwm_kib / 1024, 1),
    }


def usage(pid: int) -> Usage:
    """Raises FileNotFoundError once the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Usage(
        cpu_s=(utime + stime + cutime + cstime) / TICKS_PER_S,
        rss_kib=int(status.get("VmRSS", "0 kB").split()[0]),
        hwm_kib=int(status.get("VmHWM", "0 kB").split()[0]),
        sys_s=(stime + cstime) / TICKS_PER_S,
    )


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def loadavg() -> float:
    """The 1-minute load average: other jobs sharing the machine show here."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine() -> dict[str, object]:
    """Cores and CPU model, for the report."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": os.uname().release,
        "mem_total_mib": _meminfo("MemTotal") // 1024,
    }


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
