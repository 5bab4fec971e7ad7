"""Results: the JSON document, the markdown tables, and docs/performance.md, all from one run."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from bench.control_plane import markdown as control_markdown
from bench.haproxy import haproxy_version
from bench.loss import loss_markdown

COLUMNS = (
    ("engine", "engine"),
    ("mode", "mode"),
    ("n", "N"),
    ("probes_per_s", "probes/s"),
    ("cpu_ms_per_probe", "CPU ms/probe"),
    ("cpu_pct_one_core", "CPU % of 1 core"),
    ("cpu_sys_share", "of it in the kernel"),
    ("rss_mib", "RSS MiB"),
    ("jitter_p50_ms", "jitter p50 ms"),
    ("jitter_p99_ms", "jitter p99 ms"),
    ("missed_slots", "missed slots"),
    ("failed", "failed probes"),
)


def versions(python: str) -> dict[str, str]:
    def first_line(argv: Sequence[str]) -> str:
        try:
            out = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return "not installed"
        return (
            (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
        )

    found: dict[str, str] = {"python": platform.python_version()}
    for dist in ("anycast-agent", "exabgp", "aiohttp"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if found["anycast-agent"] == "not installed":
        import anycast_agent  # noqa: PLC0415 - only when the dist is not installed

        found["anycast-agent"] = f"{anycast_agent.__version__} (source tree)"
    found["nginx"] = first_line(["nginx", "-v"])
    found["curl"] = first_line(["curl", "--version"])
    found["haproxy"] = haproxy_version()
    found["kernel"] = platform.release()
    found["interpreter"] = python
    return found


def ratio(rows: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Baseline CPU per probe over the agent's, per mode, at size n (same run, side by side)."""
    base = _row(rows, "exabgp-healthcheck", "curl", n)
    out: dict[str, Any] = {"n": n}
    if base is None or not base.get("cpu_ms_per_probe"):
        out["note"] = "no baseline row at this size"
        return out
    for mode in ("fresh", "keepalive"):
        agent = _row(rows, "anycast-agent", mode, n)
        if agent is not None and agent.get("cpu_ms_per_probe"):
            out[mode] = round(base["cpu_ms_per_probe"] / agent["cpu_ms_per_probe"], 1)
    return out


def haproxy_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's CPU per probe over HAProxy's (fresh checks), per mode, at each size both
    ran in this run (below 1: the agent is the cheaper)."""
    out = []
    for base in rows:
        if base.get("engine") != "haproxy" or not base.get("cpu_ms_per_probe"):
            continue
        entry: dict[str, Any] = {"n": base["n"], "haproxy_ms": base["cpu_ms_per_probe"]}
        for mode in ("fresh", "keepalive"):
            agent = _row(rows, "anycast-agent", mode, base["n"])
            if agent is not None and agent.get("cpu_ms_per_probe"):
                entry[mode] = round(agent["cpu_ms_per_probe"] / base["cpu_ms_per_probe"], 2)
        out.append(entry)
    return out


def targets(
    rows: Sequence[dict[str, Any]],
    ratios: dict[str, Any],
    big: int,
    detection: dict[str, Any] | None = None,
    haproxy: Sequence[dict[str, Any]] = (),
    fast: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it holds."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, ok: bool | None) -> None:
        checks.append({"target": name, "measured": value, "limit": limit, "holds": ok})

    fresh_ratio = ratios.get("fresh")
    if any(row.get("engine") == "exabgp-healthcheck" for row in rows):
        add("fresh CPU/probe vs healthcheck", fresh_ratio, "≥ 20x",
            None if fresh_ratio is None else fresh_ratio >= 20)  # fmt: skip
    for mode, limit in (("fresh", 60.0), ("keepalive", 30.0)):
        row = _row(rows, "anycast-agent", mode, big)
        if row is None:
            continue
        add(f"{mode} N={big} CPU % of one core", row["cpu_pct_one_core"], f"< {limit:g}",
            row["cpu_pct_one_core"] < limit)  # fmt: skip
        add(f"{mode} N={big} jitter p99 ms", row["jitter_p99_ms"], "< 50",
            row["jitter_p99_ms"] is not None and row["jitter_p99_ms"] < 50)  # fmt: skip
        add(f"{mode} N={big} missed slots", row["missed_slots"], "0", row["missed_slots"] == 0)
        add(f"{mode} N={big} RSS MiB", row["rss_mib"], "< 80", row["rss_mib"] < 80)
    agent = (detection or {}).get("engines", {}).get("anycast-agent", {})
    if detection is not None and detection.get("n") == big and "decision_to_upstream_ms" in agent:
        p99 = agent["decision_to_upstream_ms"]["p99"]
        add(f"decision -> upstream RIB p99 ms, N={big}", p99, "< 50", p99 < 50)
    for entry in haproxy:
        if entry["n"] != big:
            continue
        if "fresh" in entry:
            add(f"fresh N={big} CPU/probe / HAProxy's", entry["fresh"], "≤ 1.0",
                entry["fresh"] <= 1.0)  # fmt: skip
        if "keepalive" in entry:
            add(f"keepalive N={big} CPU/probe / HAProxy's fresh", entry["keepalive"], "≤ 0.5",
                entry["keepalive"] <= 0.5)  # fmt: skip
    for case in (fast or {}).get("cases", []):
        figure = case["engines"].get("anycast-agent", {}).get("inject_to_upstream_ms")
        if case["interval_s"] < 1 and case["fault_kind"] == "refuse" and figure:
            add(f"fast mode N={case['n']} refused: injection -> upstream p99 ms", figure["p99"],
                "< 400", figure["p99"] < 400)  # fmt: skip
    return checks


def _row(rows: Sequence[dict[str, Any]], engine: str, mode: str, n: int) -> dict[str, Any] | None:
    for row in rows:
        if row.get("engine") == engine and row.get("mode") == mode and row.get("n") == n:
            return row
    return None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The tables of the parts this run measured."""
    parts = set(result["plan"]["parts"])
    lines: list[str] = []
    if "scale" in parts:
        lines += scale_markdown(result)
    if result["targets"]:
        lines += ["", "| target | measured | limit | holds |", "|---|---|---|---|"]
        for t in result["targets"]:
            holds = {True: "yes", False: "**no**", None: "-"}[t["holds"]]
            lines.append(f"| {t['target']} | {_cell(t['measured'])} | {t['limit']} | {holds} |")
    if "detection" in parts:
        lines += ["", *detection_markdown(result["detection"])]
    if "fast" in parts:
        lines += ["", *fast_markdown(result["fast_detection"])]
    if "knee" in parts:
        lines += ["", *knee_markdown(result["knee"])]
    if "control" in parts:
        section = result["control_plane"]
        lines += ["", *control_markdown(section)]
    if "loss" in parts:
        lines += ["", *loss_markdown(result["loss"])]
    return "\n".join(lines).lstrip("\n")


def scale_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in result["probe_scale"]:
        if "skipped" in row:
            lines.append(f"| {row['engine']} | {row['mode']} | {row['n']} | skipped: "
                         f"{row['skipped']} |")  # fmt: skip
            continue
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    notes = [
        f"{row['engine']} N={row['n']}: {row['note']}"
        for row in result["probe_scale"]
        if "skipped" not in row and row.get("note")
    ]
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    ratios = result["ratios"]
    if result["plan"]["baseline_sizes"]:
        figures = ", ".join(f"{k} {v}x" for k, v in ratios.items() if k not in ("n", "note"))
        lines += [
            "",
            f"Healthcheck CPU per probe / agent's, N={ratios['n']} (same run): "
            + (figures or ratios.get("note", "-")),
        ]
    lines += haproxy_markdown(result.get("haproxy_ratios", []))
    return lines


DETECTION_COLUMNS = (
    ("inject_to_upstream_ms", "injection → upstream RIB"),
    ("decision_to_upstream_ms", "decision → upstream RIB"),
    ("inject_to_decision_ms", "injection → decision"),
    ("decision_to_command_ms", "decision → withdraw logged by the agent"),
)


def haproxy_markdown(entries: Sequence[dict[str, Any]]) -> list[str]:
    if not entries:
        return []
    lines = [
        "",
        "Agent CPU per probe / HAProxy's (`server` lines with `check inter 1s`, `option "
        "httpchk` GET /health, `nbthread 1`: a fresh connection per check), each N measured "
        "just before the agent's at that N in this run (below 1: the agent is the cheaper):",
        "",
        "| N | HAProxy ms/probe | agent fresh / HAProxy | agent keep-alive / HAProxy fresh |",
        "|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['n']} | {e['haproxy_ms']} | {_cell(e.get('fresh'))} | "
            f"{_cell(e.get('keepalive'))} |"
        )
    return lines


def fast_markdown(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"fast-mode detection bench skipped: {section['skipped']}"]
    lines = [
        f"Detection by timing, the agent alone, N={section['n']} targets, {section['trials']} "
        "trials per case, one lab (cases one after the other), upstream GoBGP. Floor = fall x "
        "interval, as issue 18 states it; the fall-th failed probe comes (fall - 1) x interval "
        "after the first, which comes 0 to 1 interval after the fault (plus the timeout when "
        "the fault is a drop), so the figure minus the floor may be below 0:",
        "",
        "| interval / timeout | fall | fault | trials done | injection → upstream RIB p50 / "
        "p99 ms | the same minus the floor p50 / p99 ms | injection → decision p50 / p99 ms | "
        "decision → upstream RIB p50 / p99 ms | min-max injection → upstream ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in section["cases"]:
        e = case["engines"].get("anycast-agent", {})

        def pair(key: str, e: dict[str, Any] = e) -> str:
            figure = e.get(key)
            return f"{figure['p50']} / {figure['p99']}" if figure else "-"

        spread = e.get("inject_to_upstream_ms")
        lines.append(
            f"| {case['interval_s'] * 1000:g} / {case['timeout_s'] * 1000:g} ms | "
            f"{case['fall']} | {case['fault']} | {e.get('completed', 0)} of {case['trials']} | "
            f"{pair('inject_to_upstream_ms')} | {pair('inject_to_upstream_over_floor_ms')} | "
            f"{pair('inject_to_decision_ms')} | {pair('decision_to_upstream_ms')} | "
            + (f"{spread['min']} to {spread['max']} |" if spread else "- |")
        )
        for error in e.get("errors", [])[:3]:
            lines.append(f"| {case['label']} | error: {error} |")
    return lines


def knee_markdown(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"knee bench skipped: {section['skipped']}"]
    lines = [
        f"The knee: the largest N at which the agent holds {section['limit']} (interval "
        f"{section['interval_s']:g} s, {section['window_s']:g} s window per step, searched up to "
        f"N = {section['ceiling']}):",
        "",
        "| mode | knee N | smallest failing N | search ended by | steps (N: CPU % of 1 core, "
        "jitter p99 ms, or why it failed) |",
        "|---|---|---|---|---|",
    ]
    for mode, found in section["modes"].items():
        steps = "; ".join(
            f"{s['n']}: {s['cpu_pct_one_core']} %, {s['jitter_p99_ms']} ms"
            + ("" if s["holds"] else f" ({s['why']})")
            for s in found["steps"]
        )
        lines.append(
            f"| {mode} | {_cell(found['knee'])} | {_cell(found['first_failing'])} | "
            f"{found['ended_by']} | {steps} |"
        )
    return lines


def detection_markdown(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"detection bench skipped: {section['skipped']}"]
    head = " | ".join(f"{title} p50 / p99 ms" for _, title in DETECTION_COLUMNS)
    lines = [
        f"Detection, N={section['n']} targets, interval {section['interval_s']:g} s, "
        f"fall {section['fall']}, rise {section['rise']}, fault: {section['fault']}; "
        f"upstream {section['upstream']}:",
        "",
        f"| engine | trials done | {head} | min-max injection → upstream ms |",
        "|---|---|" + "---|" * len(DETECTION_COLUMNS) + "---|",
    ]
    for engine, e in section["engines"].items():
        cells = []
        for key, _ in DETECTION_COLUMNS:
            figure = e.get(key)
            cells.append(f"{figure['p50']} / {figure['p99']}" if figure else "-")
        spread = e.get("inject_to_upstream_ms")
        span = f"{spread['min']} to {spread['max']}" if spread else "-"
        lines.append(
            f"| {engine} | {e['completed']} of {e['trials']} | {' | '.join(cells)} | {span} |"
        )
        for error in e.get("errors", [])[:3]:
            lines.append(f"| {engine} | error: {error} |")
    return lines


def performance_doc(result: dict[str, Any], table: str, results_file: str) -> str:
    m, v = result["machine"], result["versions"]
    return f"""# Performance

Generated by `make bench` (`{result["command"]}`) on {result["date"]}; the figures below are
copied by the bench from that run ({results_file}) and never edited by hand. Re-run to update.

## Machine and versions
- {m["cores"]} cores, {m["cpu_model"]}, {m["mem_total_mib"]} MiB, kernel {m["kernel"]}
- Python {v["python"]}, anycast-agent {v["anycast-agent"]}, ExaBGP {v["exabgp"]},
  aiohttp {v["aiohttp"]}, {v["nginx"]}, {v["curl"]}, {v["haproxy"]}
- Runtime {result["runtime_s"]} s; 1-minute load average {result["loadavg"]["before"]} at the
  start, {result["loadavg"]["after"]} at the end (other jobs may share the machine)

## What is measured
- **Probe scale**: N HTTP targets (`http://[2001:db8:b::X]:8080/health`, one `local` route
  makes the whole /64 local) served by one nginx worker inside a bench namespace (`aab-…`).
  The agent runs as `anycast-agent run --dry-run` does, through `bench/agent_proc.py`, which
  only hooks each target's schedule to note how late each probe started against its slot.
  Each run has {result["plan"]["warmup_s"]:g} s of warm-up, then a
  {result["plan"]["window_s"]:g} s window. CPU is the agent process's user + system time over
  the window; RSS is its peak (VmHWM); jitter is probe start minus its scheduled start
  (the schedule already includes the 0-10 % per-slot jitter); missed slots are slots the
  schedule skipped because a probe overran.
- **Baseline**: ExaBGP's healthcheck, one process per target running
  `curl -sf -o /dev/null -m 0.8 URL` every interval (`--no-ack`, nothing to acknowledge),
  at the same interval/rise/fall. CPU includes the curl children (reaped, so counted in the
  parent's cumulative times); probes are counted at nginx. Never more processes than free
  memory allows.
- **HAProxy** ({v["haproxy"]}), the C event-loop yardstick: the same N targets as `server`
  lines of one backend with `check inter 1s fall 3 rise 2`, `option httpchk` (`GET /health
  HTTP/1.1`, expect 200), `timeout check 800ms`, `nbthread 1`, a dummy frontend (it does not
  start without one) and `maxconn 256`; its checks open a fresh connection every time, so it
  compares with the agent's fresh mode. Each size runs just before the agent's runs at that
  size, with the same warm-up and window; its CPU is user + system time from /proc, probes
  are counted at nginx, RSS is its VmHWM; the stats socket confirms its servers are up.
- **Modes**: `fresh` (default: a new connection per probe), `keepalive` (`http.keepalive:
  true`: one connection per target, re-opened at least every 30 probes, so a server that stops
  accepting connections is still detected within 30 + fall probes).
- **Detection**: GoBGP as the upstream in one namespace, ExaBGP in the PoP namespace with
  the agent as its API process (config from `anycast-agent render exabgp`), probing one
  measured service (one edge on its own address) and N - 1 healthy background targets. Each
  trial waits a random part of the interval, then adds an nft rule in the PoP namespace that
  fails the measured edge (the fault named in the table), and waits for the service's prefix
  to be withdrawn in GoBGP's RIB, read from `gobgp monitor global rib -j` and stamped when the
  line is read; then removes the rule and waits for the re-announce. *Injection* is when the
  nft command returned; *decision* is the agent's log line `target web/edge1 suspicious ->
  unhealthy` (the probe that completed the fall count). All three are wall-clock times on
  the same machine. ExaBGP's healthcheck runs the same trials as one process
  (`--withdraw-on-down`, curl, same interval/rise/fall, no background checks: each of its
  checks is a process of its own); it logs no timestamped decision. With 20 trials p99 is the
  slowest trial (nearest rank).
- **Fast-mode detection**: the same lab and trials as *Detection*, the agent alone (ExaBGP's
  healthcheck takes its timeout in whole seconds), 200 targets at `interval: 100ms`,
  `timeout: 80ms`, `fall: 3`, `rise: 2`, for a refused connection (`reject with tcp reset`)
  and a silent drop (`drop`: each probe waits for its timeout), then the default 1 s timing
  with the refused connection, all in one lab one after the other. *Floor* is fall x interval,
  as issue 18 puts it: the fall-th failed probe comes (fall - 1) x interval after the first,
  which comes 0 to 1 interval after the fault (one timeout later for a drop), so a figure
  minus the floor starts at about minus one interval.
- **The knee**: the largest N at which the agent (one process: one core) holds probe jitter
  p99 < 50 ms with no missed slot and no failed probe, per mode, at interval 1 s: N grows by
  half from 2,000 until a step fails (or reaches 8,000: nginx here holds 8,192 connections),
  then the gap is halved until within 10 %, at most 7 steps of {result["plan"]["warmup_s"]:g} s
  warm-up and a short window each. nginx shares the machine's two cores with the agent.
- **Loss** (`make bench-loss`, not part of `make bench`: 5 minutes per rate; its own dated
  section below): false withdraws when 1 % or 5 % of the edges' packets are dropped each way
  (an nft `numgen random` rule: this kernel has no netem), the edges never down, seven services
  side by side in one agent (fast kept alive, fast fresh and 1 s; a pair of targets with
  `min_healthy: 1` and a single target each; one target at fast timing with fall 5), counted
  in the upstream's RIB.
- The agent's HTTP probes here are callback probes on the probe engine (one timer heap, one
  epoll set, no coroutine per check; fresh connections closed with a reset), and the heap is
  frozen after start (`gc.freeze`): docs/design-notes.md says why, from py-spy profiles.
- On this machine client and server share the kernel: the agent's CPU includes the kernel
  work of both ends of each loopback TCP handshake (softirq runs in the connecting process),
  which a router probing remote edges does not pay.

## Latest results
{table}
"""
