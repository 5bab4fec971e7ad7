"""Results: the JSON document, the markdown tables, and docs/performance.md, all from one run."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from bench.control_plane import markdown as control_markdown

CONTROL_BEGIN = (
    "<!-- control-plane section: written by `make bench-control`, kept by `make bench` -->"
)
CONTROL_END = "<!-- end of the control-plane section -->"

COLUMNS = (
    ("engine", "engine"),
    ("mode", "mode"),
    ("n", "N"),
    ("probes_per_s", "probes/s"),
    ("cpu_ms_per_probe", "CPU ms/probe"),
    ("cpu_pct_one_core", "CPU % of 1 core"),
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


def targets(
    rows: Sequence[dict[str, Any]],
    ratios: dict[str, Any],
    big: int,
    detection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it holds."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, ok: bool | None) -> None:
        checks.append({"target": name, "measured": value, "limit": limit, "holds": ok})

    fresh_ratio = ratios.get("fresh")
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
    parts = set(result["plan"]["parts"])
    if parts == {"control"}:  # a control-plane run alone: its tables only
        return "\n".join(control_markdown(result["control_plane"]))
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
    figures = ", ".join(f"{k} {v}x" for k, v in ratios.items() if k not in ("n", "note"))
    lines += [
        "",
        f"Healthcheck CPU per probe / agent's, N={ratios['n']} (same run): "
        + (figures or ratios.get("note", "-")),
    ]
    if result["targets"]:
        lines += ["", "| target | measured | limit | holds |", "|---|---|---|---|"]
        for t in result["targets"]:
            holds = {True: "yes", False: "**no**", None: "-"}[t["holds"]]
            lines.append(f"| {t['target']} | {_cell(t['measured'])} | {t['limit']} | {holds} |")
    lines += ["", *detection_markdown(result["detection"])]
    lines += ["", *control_markdown(result["control_plane"])]
    return "\n".join(lines)


DETECTION_COLUMNS = (
    ("inject_to_upstream_ms", "injection → upstream RIB"),
    ("decision_to_upstream_ms", "decision → upstream RIB"),
    ("inject_to_decision_ms", "injection → decision"),
    ("decision_to_command_ms", "decision → withdraw logged by the agent"),
)


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
  aiohttp {v["aiohttp"]}, {v["nginx"]}, {v["curl"]}

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
- The agent's HTTP probes here are callback probes on the probe engine (one timer heap, one
  epoll set, no coroutine per check; fresh connections closed with a reset), and the heap is
  frozen after start (`gc.freeze`): docs/design-notes.md says why, from py-spy profiles.
- On this machine client and server share the kernel: the agent's CPU includes the kernel
  work of both ends of each loopback TCP handshake (softirq runs in the connecting process),
  which a router probing remote edges does not pay.

## Latest results
{table}
"""


def control_doc_section(result: dict[str, Any], table: str, results_file: str) -> str:
    """docs/performance.md's section for a control-plane run alone (`make bench-control`)."""
    m, v, c = result["machine"], result["versions"], result["control_plane"]
    load = c.get("loadavg", {})
    return f"""{CONTROL_BEGIN}
## Control plane, measured alone ({result["date"]})

The control part of the bench run alone, as `make bench-control` runs it: `{result["command"]}`,
on {result["date"]}. The figures are copied by the bench from that run ({results_file}) and
never edited by hand. Machine: {m["cores"]} cores, {m["cpu_model"]}, Python {v["python"]},
aiohttp {v["aiohttp"]}; other jobs may share it (1-minute load average {load.get("before", "-")}
at the start, {load.get("after", "-")} at the end): compare the trees within one run, side by
side, rather than with another run's figures.

{table}
{CONTROL_END}
"""


def with_section(doc: str, section: str) -> str:
    """`doc` with its control-plane section replaced by `section` (appended when it has none)."""
    if CONTROL_BEGIN in doc and CONTROL_END in doc:
        head, rest = doc.split(CONTROL_BEGIN, 1)
        tail = rest.split(CONTROL_END, 1)[1].lstrip("\n")
        return head + section + (("\n" + tail) if tail else "")
    return doc.rstrip("\n") + "\n\n" + section


def kept_section(doc: str) -> str:
    """The control-plane section of `doc` ("" when it has none), for a full run to keep."""
    if CONTROL_BEGIN not in doc or CONTROL_END not in doc:
        return ""
    body = doc.split(CONTROL_BEGIN, 1)[1].split(CONTROL_END, 1)[0]
    return f"\n{CONTROL_BEGIN}{body}{CONTROL_END}\n"
