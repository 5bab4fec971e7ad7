"""Control-plane bench: /v1/status and /metrics latency while the agent probes N targets, and the
probe jitter while 10 scrapers line up on /metrics.

One agent run (the agent as `bench.agent_proc` runs it, with `control.listen` set) goes through
phases once it is ready (/readyz), each timed against the probe clock the agent records
(`--stamps`): quiet (no request: the jitter to compare with), each read of `READS` one request
after the other, then `SCRAPERS` clients scraping /metrics at the same instants every second
with Prometheus' Accept header, then quiet again.
With `trees`, the agent code of each tree (e.g. the commit before a change) is measured the
same way, the trees alternating round by round in this one run, so they share the machine's
conditions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.nginx import Nginx
from bench.sandbox import Sandbox
from bench.stats import ms, percentile
from bench.targets import agent_config, write_config

ROOT = Path(__file__).resolve().parent.parent
CLIENT = Path(__file__).resolve().parent / "control_client.py"
AGENT = Path(__file__).resolve().parent / "agent_proc.py"
LISTEN_PORT = 9179
REQUEST_GAP_S = 0.05
REQUEST_TIMEOUT_S = 30.0  # the client's, per request (a request that takes longer is an error)
SCRAPERS = 10
SCRAPE_EVERY_S = 1.0
SERVING_WITHIN_S = 60.0
# What Prometheus 2.x sends: OpenMetrics first.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@dataclass(frozen=True, slots=True)
class Read:
    label: str
    path: str
    accept: str = ""


READS = (
    # The floor: a snapshot (when the last one is stale) and a small JSON answer, no rendering.
    Read("/healthz", "/healthz"),
    Read("/v1/status", "/v1/status"),
    Read("/v1/status?service=svc0", "/v1/status?service=svc0"),
    Read("/metrics", "/metrics"),
    Read("/metrics (OpenMetrics)", "/metrics", PROMETHEUS_ACCEPT),
)
SCRAPE_PHASE = f"{SCRAPERS} scrapers"
QUIET = "quiet, both phases"


@dataclass(frozen=True, slots=True)
class ControlPlan:
    quiet_s: float = 10.0
    requests: int = 50  # per read
    scrape_for_s: float = 15.0
    rounds: int = 1  # runs per tree


SMOKE = ControlPlan(quiet_s=2.0, requests=5, scrape_for_s=2.0)


@dataclass(frozen=True, slots=True)
class Tree:
    """Agent code to measure: a source tree with `anycast_agent/` in it."""

    label: str
    path: Path


def this_tree() -> Tree:
    return Tree("this tree", ROOT)


def run_control_plane(
    work: Path,
    n: int,
    python: str,
    warmup_s: float,
    trees: Sequence[Tree] = (),
    plan: ControlPlan = ControlPlan(),
) -> dict[str, object]:
    """Every tree (this one when none is given) measured `rounds` times, alternating."""
    trees = tuple(trees) or (this_tree(),)
    runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in trees}
    load_before = round(os.getloadavg()[0], 2)
    rounds = plan.rounds
    for r in range(rounds):
        for i, tree in enumerate(trees if r % 2 == 0 else tuple(reversed(trees))):
            print(f"control plane: N={n}, {tree.label} ({tree.path}), round {r + 1} of {rounds}")
            run = _one_run(work / f"control-{r}-{i}", n, python, warmup_s, tree, plan)
            if "skipped" in run:
                return {"skipped": f"{tree.label}: {run['skipped']}"}
            runs[tree.label].append(run)
    return {
        "n": n,
        "loadavg": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "rounds": rounds,
        "requests_per_read": plan.requests,
        "quiet_s": plan.quiet_s,
        "scrapers": {"count": SCRAPERS, "every_s": SCRAPE_EVERY_S, "for_s": plan.scrape_for_s},
        "trees": {
            t.label: {"path": str(t.path), "commit": _commit(t.path), **_summary(runs[t.label])}
            for t in trees
        },
    }


def _one_run(
    work: Path, n: int, python: str, warmup_s: float, tree: Tree, plan: ControlPlan
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    state.mkdir(exist_ok=True)
    config = write_config(
        work / "agent.yaml",
        agent_config(n, state, control_listen=f"127.0.0.1:{LISTEN_PORT}"),
    )
    out = work / "agent.json"
    with Sandbox("ctl") as box:
        Nginx(box, work / "nginx").start()
        env = {**os.environ, "PYTHONPATH": str(tree.path)}
        # By path, so `anycast_agent` comes from PYTHONPATH (the tree), never from the cwd.
        argv = [python, str(AGENT), "--config", str(config), "--stamps", "--out", str(out)]
        proc = box.spawn([*argv, "--warmup", "0", "--window", "3600"],
                         stderr=work / "agent.log", env=env)  # fmt: skip
        try:
            if not _ready(box, python):
                return {"skipped": f"the agent was not ready within {SERVING_WITHIN_S:g} s"}
            time.sleep(warmup_s)
            phases: dict[str, tuple[float, float]] = {}
            t0 = time.monotonic()
            time.sleep(plan.quiet_s)
            phases["quiet"] = (t0, time.monotonic())
            reads: dict[str, Any] = {}
            seq = [str(plan.requests), str(REQUEST_GAP_S)]
            for read in READS:
                got = _client(box, python, ["seq", read.path, *seq, read.accept])
                phases[read.label] = (got["began"], got["ended"])
                reads[read.label] = got
            scrape = [str(SCRAPERS), str(SCRAPE_EVERY_S), str(plan.scrape_for_s), "/metrics"]
            got = _client(box, python, ["scrapers", *scrape, PROMETHEUS_ACCEPT])
            phases[SCRAPE_PHASE] = (got["began"], got["ended"])
            reads[SCRAPE_PHASE] = got
            t0 = time.monotonic()
            time.sleep(plan.quiet_s)
            phases["quiet again"] = (t0, time.monotonic())
        finally:
            box.stop(proc)
    measured = json.loads(out.read_text())
    return {"reads": reads, "jitter": _jitter(measured, phases)}


def _commit(path: Path) -> str | None:
    """The tree's git commit (with `+changes` when it has uncommitted ones), if it is a git tree."""
    if not (path / ".git").exists():
        return None

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                             check=False)  # fmt: skip
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "anycast_agent")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def _ready(box: Sandbox, python: str) -> bool:
    """Whether the agent answers /readyz with 200 (every service decided) within
    SERVING_WITHIN_S: the endpoint serves before the probes start."""
    deadline = time.monotonic() + SERVING_WITHIN_S
    while time.monotonic() < deadline:
        argv = box.argv([python, str(CLIENT), "seq", "/readyz", "1", "0"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode == 0 and json.loads(out.stdout)["latency_s"]:
            return True
        time.sleep(0.5)
    return False


def _client(box: Sandbox, python: str, args: list[str]) -> dict[str, Any]:
    budget = 100 * (REQUEST_TIMEOUT_S + REQUEST_GAP_S)
    out = subprocess.run(
        box.argv([python, str(CLIENT), *args]),
        capture_output=True,
        text=True,
        timeout=budget,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"control client {args[:2]} failed: {out.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _jitter(
    measured: dict[str, Any], phases: dict[str, tuple[float, float]]
) -> dict[str, list[float]]:
    """The lateness of the probes that started within each phase."""
    stamps, lateness = measured["started_at"], measured["lateness_s"]
    return {
        name: [late for at, late in zip(stamps, lateness, strict=True) if began <= at < ended]
        for name, (began, ended) in phases.items()
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies and jitter of every run of one tree, pooled."""
    reads: dict[str, Any] = {}
    for label in [r.label for r in READS] + [SCRAPE_PHASE]:
        lat = [x for run in runs for x in run["reads"][label]["latency_s"]]
        errors = [x for run in runs for x in run["reads"][label]["errors"]]
        reads[label] = {
            "requests": len(lat) + len(errors),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "max_ms": ms(max(lat, default=None) if lat else None),
            "bytes": runs[-1]["reads"][label]["bytes"],
        }
    jitter: dict[str, Any] = {}
    phases = {p: [p] for p in runs[0]["jitter"]} | {QUIET: ["quiet", "quiet again"]}
    for phase, parts in phases.items():
        late = [x for run in runs for part in parts for x in run["jitter"][part]]
        jitter[phase] = _late(late)
    # Each run on its own, to tell a disturbed run (the machine is shared) from a pattern.
    each = [
        {
            "jitter_p99_ms": {p: _late(late)["p99_ms"] for p, late in run["jitter"].items()},
            "p99_ms": {r: ms(percentile(f["latency_s"], 99)) for r, f in run["reads"].items()},
        }
        for run in runs
    ]
    return {"reads": reads, "jitter": jitter, "runs": each}


def _late(late: list[float]) -> dict[str, Any]:
    return {
        "probes": len(late),
        "p50_ms": ms(percentile(late, 50)),
        "p99_ms": ms(percentile(late, 99)),
    }


def markdown(section: dict[str, Any]) -> list[str]:
    """The control-plane tables, and the issue's targets judged for each tree."""
    if "skipped" in section:
        return [f"control-plane bench skipped: {section['skipped']}"]
    trees = section["trees"]
    sc = section["scrapers"]
    lines = [
        f"Control plane, N={section['n']} targets probed (fresh connections, 1 s interval); "
        f"{section['rounds']} run(s) of each tree, alternating; {section['requests_per_read']} "
        f"requests per read and run, one after the other, {REQUEST_GAP_S * 1000:g} ms apart; "
        f"then {sc['count']} scrapers GET /metrics at the same instants every {sc['every_s']:g} s "
        f"for {sc['for_s']:g} s (Prometheus' Accept header); each request a new connection, "
        "timed from connect to the last byte by a client in the bench namespace (an error: no "
        f"200 within {REQUEST_TIMEOUT_S:g} s; percentiles are of the answered requests):",
        "",
        *(
            f"- {label}: {tree['path']}" + (f" at {tree['commit']}" if tree["commit"] else "")
            for label, tree in trees.items()
        ),
        "",
        "| tree | read | requests | errors | p50 ms | p99 ms | max ms | body bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, tree in trees.items():
        for read, f in tree["reads"].items():
            lines.append(f"| {label} | {read} | {f['requests']} | {f['errors']} | {f['p50_ms']} "
                         f"| {f['p99_ms']} | {f['max_ms']} | {f['bytes']} |")  # fmt: skip
    lines += [
        "",
        "Probe jitter (probe start minus its slot) by phase:",
        "",
        "| tree | phase | probes | jitter p50 ms | jitter p99 ms |",
        "|---|---|---|---|---|",
    ]
    for label, tree in trees.items():
        for phase, f in tree["jitter"].items():
            lines.append(f"| {label} | {phase} | {f['probes']} | {f['p50_ms']} | {f['p99_ms']} |")
    lines += [
        "",
        "Each run alone (a disturbed run shows here, not as a pattern):",
        "",
        f"| tree | run | jitter p99 ms: quiet / {SCRAPE_PHASE} / quiet again "
        "| /v1/status p99 ms | /metrics p99 ms |",
        "|---|---|---|---|---|",
    ]
    for label, tree in trees.items():
        for i, run in enumerate(tree["runs"], 1):
            j, p99 = run["jitter_p99_ms"], run["p99_ms"]
            jitter = f"{j['quiet']} / {j[SCRAPE_PHASE]} / {j['quiet again']}"
            lines.append(f"| {label} | {i} | {jitter} | {p99['/v1/status']} | {p99['/metrics']} |")
    lines += ["", "| tree | target | measured | limit | holds |", "|---|---|---|---|---|"]
    for label, tree in trees.items():
        for name, measured, limit, holds in _targets(tree):
            verdict = {True: "yes", False: "**no**", None: "-"}[holds]
            lines.append(f"| {label} | {name} | {measured} | {limit} | {verdict} |")
    return lines


def _targets(tree: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """Issue 18's targets: /v1/status p99 < 20 ms, /metrics p99 < 100 ms, and the probe jitter
    p99 with the scrapers within 10 % of the quiet phases' (before and after the requests)."""
    reads, jitter = tree["reads"], tree["jitter"]
    out: list[tuple[str, Any, str, bool | None]] = []
    for read, limit in (("/v1/status", 20), ("/metrics", 100), ("/metrics (OpenMetrics)", 100)):
        p99 = reads[read]["p99_ms"]
        out.append((f"{read} p99 ms", p99, f"< {limit}", None if p99 is None else p99 < limit))
    quiet, busy = jitter[QUIET]["p99_ms"], jitter[SCRAPE_PHASE]["p99_ms"]
    ratio = None if not quiet or busy is None else round(busy / quiet, 2)
    out.append((f"jitter p99 with {SCRAPE_PHASE} / quiet", ratio, "≤ 1.1",
                None if ratio is None else ratio <= 1.1))  # fmt: skip
    return out


def parse_trees(values: Sequence[str]) -> list[Tree]:
    """`LABEL=PATH` or `PATH` (labelled by its name) for each tree to measure beside this one."""
    trees = []
    for value in values:
        label, sep, path = value.partition("=")
        tree = Tree(label, Path(path)) if sep else Tree(Path(value).name, Path(value))
        if not (tree.path / "anycast_agent" / "__init__.py").exists():
            sys.exit(f"--control-base {value}: no anycast_agent/ package in {tree.path}")
        trees.append(Tree(tree.label, tree.path.resolve()))
    return trees
