"""Loss bench: how often packet loss on the edge links withdraws a healthy service (issue 18).

The detection bench's lab (`bench.detection.edge_lab`: GoBGP upstream, ExaBGP and the agent as
deployed, nginx serving every edge) with seven services side by side in one agent: a pair of
targets with `min_healthy: 1` and a single target, each at fast timing (100 ms, timeout
80 ms, fall 3, rise 2) with kept-alive connections (what docs recommend for fast mode), at
fast timing with a fresh connection per probe, and at the default 1 s timing; and a single
target at fast timing kept alive with fall 5 (the sizing README advises for lossy links). The
edges never go down: every withdraw the upstream sees is a false one.

Each loss rate gets a fresh agent (new state directory, so no damping carries over), waits
until every target is healthy and every prefix is in the upstream's RIB, then drops that
share of the edges' packets for the window, each way at random. This machine's kernel has no
netem qdisc, so the loss is an nft rule (`numgen random`) on the PoP's output hook, which
every packet to and from the edges' port crosses once: the same per-packet loss as netem's
`loss P%` on the link, with no delay added. Figures per service: probes and the share that
failed (from the agent's /v1/status before and after), targets gone unhealthy (the agent's
log), withdraws of the service's prefix read from the upstream's RIB monitor and the seconds
it was out of the RIB within the window.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.detection import FAST, DetectionPlan, agent_exabgp_conf, edge_lab, unavailable
from bench.sandbox import Sandbox, run
from bench.targets import (
    HTTP_PORT,
    Timing,
    agent_config,
    service_prefixes,
    target_url,
)
from bench.upstream import Gobgp, RibEvent
from tests.lab.exabgp import exabgp_env

ROOT = Path(__file__).resolve().parent.parent
CONTROL = "127.0.0.1:9379"
START_TIMEOUT_S = 60.0
# A target two failures down when the loss stops may still fail its next probe (one started
# before): withdraws read up to this long after the window count in it.
TAIL_S = 2.0
UNHEALTHY = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) \w+ target ([\w.-]+)/([\w.-]+) \w+ -> unhealthy",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class LossService:
    name: str
    targets: int  # 2: min_healthy 1 (one target's failure withdraws nothing), 1: alone
    timing: Timing
    keepalive: bool

    def describe(self) -> str:
        conn = "kept alive" if self.keepalive else "fresh"
        t = self.timing
        return f"{t.interval_s * 1000:g} ms, fall {t.fall}, {conn}, {self.targets} target(s)"


# Fast timing with two more failures to withdraw: README's advice for lossy links, measured.
FAST_FALL5 = Timing(interval_s=FAST.interval_s, timeout_s=FAST.timeout_s, fall=5, rise=FAST.rise)


SERVICES = (
    LossService("fast-ka-pair", 2, FAST, keepalive=True),
    LossService("fast-ka-single", 1, FAST, keepalive=True),
    LossService("fast5-ka-single", 1, FAST_FALL5, keepalive=True),
    LossService("fast-fresh-pair", 2, FAST, keepalive=False),
    LossService("fast-fresh-single", 1, FAST, keepalive=False),
    LossService("slow-fresh-pair", 2, Timing(), keepalive=False),
    LossService("slow-fresh-single", 1, Timing(), keepalive=False),
)


@dataclass(frozen=True, slots=True)
class LossPlan:
    python: str
    exabgp: str
    rates_pct: tuple[float, ...] = (1.0, 5.0)
    window_s: float = 300.0
    services: tuple[LossService, ...] = SERVICES


def loss_config(plan: LossPlan, state_dir: Path) -> dict[str, Any]:
    """The agent's config: every service of the plan, each on its own edge addresses."""
    prefixes = service_prefixes(len(plan.services))
    services, edge = [], 0
    for svc, prefix in zip(plan.services, prefixes, strict=True):
        targets = []
        for j in range(svc.targets):
            t = svc.timing
            http: dict[str, Any] = {"url": target_url(edge)}
            if svc.keepalive:
                http["keepalive"] = True
            targets.append({"name": f"edge{j}", "interval": t.interval_s,
                            "timeout": t.timeout_s, "fall": t.fall, "rise": t.rise,
                            "http": http})  # fmt: skip
            edge += 1
        services.append({"name": svc.name, "prefixes": [prefix], "min_healthy": 1,
                         "targets": targets})  # fmt: skip
    config = agent_config(0, state_dir, control_listen=CONTROL)
    config["services"] = services
    return config


class Loss:
    """Random loss of the edges' packets, each way: one nft table in the PoP, on or off."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self._nft("add table inet aabloss")
        self._nft("add chain inet aabloss out { type filter hook output priority 0; }")

    def _nft(self, command: str) -> None:
        run(self.box.argv(["nft", command]))

    def on(self, pct: float) -> float:
        """Drop `pct` % of the packets to and from the edges' port; the wall time it holds by."""
        per_10k = round(pct * 100)
        for way in ("dport", "sport"):
            self._nft(f"add rule inet aabloss out tcp {way} {HTTP_PORT} "
                      f"numgen random mod 10000 < {per_10k} drop")  # fmt: skip
        return time.time()

    def off(self) -> float:
        self._nft("flush chain inet aabloss out")
        return time.time()


def run_loss(work: Path, plan: LossPlan) -> dict[str, Any]:
    if note := unavailable(DetectionPlan(n=1, trials=0, python=plan.python, exabgp=plan.exabgp)):
        return {"skipped": note}
    out: dict[str, Any] = {
        "window_s": plan.window_s,
        "services": {s.name: s.describe() for s in plan.services},
        "runs": [],
    }
    with edge_lab(work) as (pop, gobgp):
        loss = Loss(pop)
        for pct in plan.rates_pct:
            out["runs"].append(_one_rate(pop, gobgp, loss, work, plan, pct))
            print(f"  loss {pct:g} %: done", flush=True)
    return out


def _one_rate(
    pop: Sandbox, gobgp: Gobgp, loss: Loss, work: Path, plan: LossPlan, pct: float
) -> dict[str, Any]:
    label = f"loss-{pct:g}"
    state = work / f"state-{label}"
    state.mkdir(parents=True, exist_ok=True)
    conf = agent_exabgp_conf(work, label, loss_config(plan, state), plan.python)
    names = [s.name for s in plan.services]
    prefixes = dict(zip(names, service_prefixes(len(names)), strict=True))
    log = work / f"exabgp-{label}.log"
    started = time.time()
    exa = pop.spawn([plan.exabgp, str(conf)], stdout=log, stderr=log,
                    env=exabgp_env({"PYTHONPATH": str(ROOT)}))  # fmt: skip
    try:
        for prefix in prefixes.values():
            gobgp.wait(prefix, withdrawn=False, after=started, timeout_s=START_TIMEOUT_S)
        before = _all_healthy(pop, deadline_s=START_TIMEOUT_S)
        t0 = loss.on(pct)
        time.sleep(plan.window_s)  # the measurement itself: loss for the whole window
        t1 = loss.off()
        after = _status_counts(pop)
        time.sleep(TAIL_S)  # withdraws decided on probes sent before the loss stopped
        if exa.poll() is not None:
            raise RuntimeError(f"ExaBGP exited {exa.returncode} during the window (see {log})")
    finally:
        loss.off()
        pop.stop(exa)
    unhealthy = _unhealthy_times(log.read_text(errors="replace"))
    services = {}
    for svc in plan.services:
        prefix = prefixes[svc.name]
        events = [e for e in gobgp.events if e.prefix == prefix]
        probes = after[svc.name][0] - before[svc.name][0]
        failed = after[svc.name][1] - before[svc.name][1]
        services[svc.name] = {
            "probes": probes,
            "failed_pct": round(100 * failed / probes, 2) if probes else None,
            "went_unhealthy": sum(t0 <= at <= t1 + TAIL_S for at in unhealthy.get(svc.name, [])),
            "withdraws": sum(e.withdrawn and t0 <= e.at <= t1 + TAIL_S for e in events),
            "withdrawn_s": round(withdrawn_seconds(events, t0, t1), 2),
        }
    return {"loss_pct": pct, "window_s": round(t1 - t0, 1), "services": services}


def withdrawn_seconds(events: list[RibEvent], t0: float, t1: float) -> float:
    """How long within [t0, t1] the prefix was out of the RIB (it was in at t0)."""
    out, since = 0.0, None
    for e in sorted(events, key=lambda e: e.at):
        if e.at <= t0:
            since = t0 if e.withdrawn else None
        elif e.at >= t1:
            break
        elif e.withdrawn and since is None:
            since = e.at
        elif not e.withdrawn and since is not None:
            out, since = out + e.at - since, None
    return out + (t1 - since if since is not None else 0.0)


def _status_counts(pop: Sandbox) -> dict[str, tuple[int, int, bool]]:
    """Per service: probes finished, of them failed, and whether every target is healthy."""
    doc = json.loads(run(pop.argv(["curl", "-sf", "-m", "10", f"http://{CONTROL}/v1/status"])))
    counts = {}
    for svc in doc["services"]:
        ok = sum(t["probes_ok"] for t in svc["targets"])
        failed = sum(t["probes_failed"] for t in svc["targets"])
        healthy = all(t["state"] == "healthy" for t in svc["targets"])
        counts[svc["name"]] = (ok + failed, failed, healthy)
    return counts


def _all_healthy(pop: Sandbox, deadline_s: float) -> dict[str, tuple[int, int, bool]]:
    deadline = time.monotonic() + deadline_s
    while True:
        counts = _status_counts(pop)
        if all(healthy for _, _, healthy in counts.values()):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"targets not all healthy within {deadline_s:g} s: {counts}")
        time.sleep(0.2)


def _unhealthy_times(log_text: str) -> dict[str, list[float]]:
    """Wall times at which a target of each service went unhealthy (the agent's log)."""
    out: dict[str, list[float]] = {}
    for m in UNHEALTHY.finditer(log_text):
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        out.setdefault(m.group(2), []).append(at)
    return out


def loss_markdown(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"loss bench skipped: {section['skipped']}"]
    lines = [
        f"False withdraws under random loss of the edges' packets (each way; nft `numgen "
        f"random`, as netem's `loss`), {section['window_s']:g} s per rate, a fresh agent per "
        "rate, the edges never down; fast = 100 ms interval, 80 ms timeout, rise 2; slow = 1 s, "
        "800 ms, rise 2; pairs have `min_healthy: 1`; damping at its defaults (1000 per UP/DOWN "
        "change, suppressed at 3000 until below 750, half-life 60 s) and the ramp too:",
        "",
        "| loss | service | timing | probes | failed % | targets gone unhealthy | "
        "withdraws at the upstream | seconds withdrawn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in section["runs"]:
        for name, s in r["services"].items():
            lines.append(
                f"| {r['loss_pct']:g} % | {name} | {section['services'][name]} | {s['probes']} "
                f"| {s['failed_pct']} | {s['went_unhealthy']} | {s['withdraws']} | "
                f"{s['withdrawn_s']} of {r['window_s']:g} |"
            )
    return lines
