"""`make demo-fleet`: four PoPs in two regions coordinating through etcd, printed as a timeline.

pop1, pop2 (region eu) and pop3, pop4 (region us) run ExaBGP with the agent, peer with one
upstream (BIRD) and share one etcd member; K = 2 (`min_pops`). Three acts, each line showing
what the upstream holds from every PoP at that moment:

1. the correlated failure: every edge of every PoP dies at once; the guard lets PoPs withdraw
   only while K others still announce, so K stay (de-preferred), and all come back with the
   edges;
2. a region drain: `ctl/intent/region/eu` de-prefers eu, withdraws it after `drain_grace`,
   and deleting the key re-announces it staged;
3. a ramp: `ctl/ramp/service/web` at 25, 50 and 100 % of the four PoPs.

`ctl/` keys are written straight to etcd (the agent's own client, run in the etcd namespace).
Every namespace is deleted on any exit, Ctrl-C included. Installs nothing: `make demo-fleet`
does.

    python -m tests.lab.fleetdemo [--quick]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from anycast_agent.core.fleet_intents import ramp_share
from tests.lab.fleetlab import FleetLab, View, build_fleet
from tests.lab.netns import list_namespaces
from tests.lab.prereqs import lab_missing
from tests.lab.topology_description import DEMO_TIMERS, QUICK_TIMERS, Timers
from tests.lab.wait import wait_for

REGIONS = ("eu", "eu", "us", "us")
K = 2
RAMP_SALT = "demo-1"
RAMP_STEPS = (25, 50, 100)
AUTHOR = "make demo-fleet"
# Agent log lines worth a timeline line: state changes, the guard's answers, intents, the mode.
_AGENT_LINE = re.compile(
    r" (?:INFO|WARNING) ((?:service \S+ \S+ -> |fleet guard |fleet intents |fleet DEGRADED|"
    r"fleet connected).*)$"
)
LEGEND = (
    "each line: every PoP's path at the upstream, then the event. A announced (own MED), "
    "D de-preferred\n(MED 4294967294, GRACEFUL_SHUTDOWN, AS path x4), Rn staged re-announce "
    "(AS path xn), + at a penalty MED, W withdrawn"
)


@dataclass
class Timeline:
    """Prints one line per event: every PoP's path at the upstream at that moment, then what
    happened; `poll` turns path changes and the agents' log lines into events of their own."""

    lab: FleetLab
    out: TextIO
    t0: float = field(default_factory=time.monotonic)
    view: View = field(default_factory=dict)
    agent_lines: bool = True  # False: read the agents' logs but print nothing from them
    _offsets: dict[Path, int] = field(default_factory=dict)
    _last_agent_line: dict[str, str] = field(default_factory=dict)

    def paths(self) -> str:
        return " ".join(f"{pop} {letter:<3}" for pop, letter in self.lab.letters(self.view).items())

    def event(self, text: str) -> None:
        t = time.monotonic() - self.t0
        self.out.write(f"t=+{t:6.2f}s  {self.paths()} | {text}\n")
        self.out.flush()

    def heading(self, text: str) -> None:
        self.out.write(f"\n{text}\n")
        self.out.flush()

    def poll(self) -> View:
        for name, pop in self.lab.fleet_pops.items():
            if pop.exabgp is None:
                continue
            for path in (pop.exabgp.stdout_path, pop.exabgp.stderr_path):
                for raw in self._new_lines(path):
                    match = _AGENT_LINE.search(raw)
                    # A refused withdraw is asked again every few seconds: print it once.
                    if match and self._last_agent_line.get(name) != match[1]:
                        self._last_agent_line[name] = match[1]
                        if self.agent_lines:
                            self.event(f"[{name}] {match[1]}")
        view = self.lab.view()
        if view != self.view:
            self.view = view
            self.event("(the upstream's paths changed)")
        return view

    def _new_lines(self, path: Path) -> list[str]:
        if not path.exists():
            return []
        offset = self._offsets.get(path, 0)
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return []
        self._offsets[path] = offset + len(complete) + 1
        return complete.decode(errors="replace").splitlines()

    def wait(self, predicate: Callable[[View], bool], *, timeout_s: float, what: str) -> float:
        """Poll (printing events) until `predicate(view)` holds; the seconds it took."""
        return wait_for(self.poll, predicate, timeout_s=timeout_s, interval_s=0.05, what=what)

    def hold(self, duration_s: float) -> None:
        """Keep polling (printing events) for `duration_s`."""
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.poll()
            time.sleep(0.05)


@dataclass
class Result:
    settle_s: float = 0.0
    failure_settled_s: float = 0.0  # edges killed -> K de-preferred, the rest withdrawn
    kept: list[str] = field(default_factory=list)
    failure_back_s: float = 0.0  # edges restored -> every PoP announced again
    drain_s: float = 0.0  # intent written -> eu withdrawn
    undrain_s: float = 0.0  # intent deleted -> eu announced again
    ramp_s: dict[int, float] = field(default_factory=dict)
    ramp_share: dict[int, list[str]] = field(default_factory=dict)


def all_announced(lab: FleetLab) -> Callable[[View], bool]:
    return lambda v: set(lab.letters(v).values()) == {"A"}


def published_line(lab: FleetLab) -> str:
    states = lab.published()
    return "etcd svc/web/pop/*: " + ", ".join(f"{p} {s or '-'}" for p, s in states.items())


def run_scenario(lab: FleetLab, tl: Timeline, drain_grace_s: float) -> Result:
    result = Result()
    timers = lab.timers
    pops = [p.name for p in lab.fleet.pops]
    recover_s = (timers.rise + 2) * timers.interval_s + 5 * timers.stage_hold_s + 15
    step_s = drain_grace_s + recover_s

    # Starting up: paths only (the agents' start-up lines are many and alike).
    tl.agent_lines = False
    for pop in lab.fleet_pops.values():
        pop.start(ramp=True)
        region = lab.fleet.region_of(pop.name)
        tl.poll()
        tl.event(f"{pop.name} ({region}): ExaBGP {lab.exabgp_version} + agent started")
    result.settle_s = tl.wait(all_announced(lab), timeout_s=recover_s + 15, what="all announced")
    wait_for(
        lab.fleet_modes,
        lambda modes: all(m == "connected" for m in modes.values()),
        timeout_s=15,
        what="every agent's fleet mode connected",
    )
    tl.poll()
    tl.agent_lines = True
    tl.event(f"all {len(pops)} PoPs announced, every agent connected to etcd (K = {K})")

    # 1. The correlated failure.
    tl.heading("1. correlated failure: every edge of every PoP dies at once")
    killed = lab.kill_all_edges()
    tl.event("killed every edge server of every PoP (SIGKILL)")

    def k_kept(v: View) -> bool:
        letters = lab.letters(v)
        return sorted(letters.values()) == ["D"] * K + ["W"] * (len(pops) - K)

    tl.wait(k_kept, timeout_s=step_s, what=f"{K} PoPs de-preferred, the rest withdrawn")
    result.failure_settled_s = time.monotonic() - killed
    result.kept = sorted(p for p, letter in lab.letters(tl.view).items() if letter == "D")
    tl.event(
        f"guard: {K} PoPs kept (de-preferred): {', '.join(result.kept)}; "
        f"{result.failure_settled_s:.2f}s after the kill"
    )
    tl.hold(3.0)
    tl.event(published_line(lab))
    restored = time.monotonic()
    for pop in lab.fleet_pops.values():
        pop.restore_edges()
    tl.event("restarted every edge server")
    tl.wait(all_announced(lab), timeout_s=recover_s, what="every PoP announced again")
    result.failure_back_s = time.monotonic() - restored
    tl.event(f"every PoP announced again {result.failure_back_s:.2f}s after the edges came back")

    # 2. A region drain and undrain.
    eu = lab.fleet.region_pops("eu")
    tl.heading(f"2. region drain and undrain: ctl/intent/region/eu ({', '.join(eu)})")
    key = "ctl/intent/region/eu"
    intent: dict[str, Any] = {
        "action": "drain",
        "reason": "eu maintenance",
        "author": AUTHOR,
        "created": time.time(),
    }
    written = time.monotonic()
    rev = lab.ctl_put(key, intent)
    tl.event(f"put {key} (revision {rev})")

    def eu_gone(v: View) -> bool:
        return all(lab.letters(v)[p] == ("W" if p in eu else "A") for p in pops)

    tl.wait(eu_gone, timeout_s=step_s, what="eu withdrawn")
    result.drain_s = time.monotonic() - written
    tl.event(f"eu withdrawn {result.drain_s:.2f}s after the put (grace {drain_grace_s:g}s)")
    lab.wait_acked(rev)
    tl.event(f"every PoP acknowledged revision {rev} (pops/<pop> ctl_rev_applied)")
    written = time.monotonic()
    rev = lab.ctl_delete(key)
    tl.event(f"deleted {key} (revision {rev})")
    tl.wait(all_announced(lab), timeout_s=recover_s, what="eu announced again")
    result.undrain_s = time.monotonic() - written
    tl.event(f"eu announced again {result.undrain_s:.2f}s after the delete (staged)")

    # 3. A ramp over every PoP.
    key = f"ctl/ramp/service/{lab.fleet.service}"
    tl.heading(f"3. ramp: {key} over {', '.join(pops)}, salt {RAMP_SALT!r}, 25/50/100 %")
    for percent in RAMP_STEPS:
        share = ramp_share(pops, RAMP_SALT, percent)
        result.ramp_share[percent] = sorted(share)
        written = time.monotonic()
        rev = lab.ctl_put(
            key,
            {
                "percent": percent,
                "salt": RAMP_SALT,
                "members": pops,
                "author": AUTHOR,
                "reason": "demo ramp",
                "set_at": time.time(),
            },
        )
        tl.event(f"put {key} {percent}% (revision {rev}): share {', '.join(sorted(share))}")
        # Outside the share: de-preferred, then withdrawn while K others still announce.
        others = max(0, K - len(share))

        def settled(v: View, share: frozenset[str] = share, others: int = others) -> bool:
            letters = lab.letters(v)
            rest = sorted(letters[p] for p in pops if p not in share)
            return all(letters[p] == "A" for p in share) and rest == sorted(
                ["D"] * others + ["W"] * (len(rest) - others)
            )

        tl.wait(settled, timeout_s=step_s, what=f"the {percent}% share")
        result.ramp_s[percent] = time.monotonic() - written
        kept = [p for p, letter in lab.letters(tl.view).items() if letter == "D"]
        tl.event(
            f"{percent}%: {len(share)} of {len(pops)} announced"
            + (f", {', '.join(kept)} kept de-preferred (K = {K})" if kept else "")
            + f" ({result.ramp_s[percent]:.2f}s)"
        )
        lab.wait_acked(rev)
    tl.event(published_line(lab))
    return result


def summary(result: Result, timers: Timers, drain_grace_s: float) -> list[str]:
    ramp = ", ".join(
        f"{p}% {len(result.ramp_share[p])} PoP(s) in {result.ramp_s[p]:.1f} s" for p in RAMP_STEPS
    )
    return [
        f"timers: interval {timers.interval_s:g} s, fall {timers.fall}, rise {timers.rise}, "
        f"stage hold {timers.stage_hold_s:g} s, drain_grace {drain_grace_s:g} s; K = {K}",
        f"correlated failure: {', '.join(result.kept)} kept de-preferred, the rest withdrawn "
        f"{result.failure_settled_s:.1f} s after the kill; all back "
        f"{result.failure_back_s:.1f} s after the edges",
        f"region drain eu: withdrawn {result.drain_s:.1f} s after the put; "
        f"announced again {result.undrain_s:.1f} s after the delete",
        f"ramp: {ramp}",
    ]


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI timers (faster, less to read)")
    args = parser.parse_args(argv)
    missing = lab_missing("5.0")
    if shutil.which("etcd") is None:
        missing.append("etcd (apt-get install etcd-server)")
    if missing:
        out.write(
            "the fleet demo needs: " + "; ".join(missing) + " (run `make demo-fleet` as root)\n"
        )
        return 2
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, through the lab's teardown; SIGINT
    # is set too because a shell's background job inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_keyboard_interrupt)
    timers = QUICK_TIMERS if args.quick else DEMO_TIMERS
    drain_grace_s = 2.0 if args.quick else 3.0
    before = list_namespaces()
    desc = build_fleet(4, K, regions=REGIONS, drain_grace_s=drain_grace_s)
    lab = FleetLab(exabgp_version="5.0", description=desc, timers=timers)
    out.write(
        "fleet lab: pop1, pop2 (eu) and pop3, pop4 (us) -> upstream (BIRD, AS 65000); "
        f"etcd at {desc.etcd_url}; VIP {desc.vip}, K = {K}\n{LEGEND}\n"
    )
    try:
        with lab:
            names = ", ".join(ns.name for ns in lab.namespaces.values())
            out.write(f"namespaces: {names}\n\n")
            timeline = Timeline(lab, out)
            result = run_scenario(lab, timeline, drain_grace_s)
            out.write("\n" + "\n".join(summary(result, timers, drain_grace_s)) + "\n")
    except KeyboardInterrupt:
        out.write(f"\ninterrupted: lab torn down (logs kept in {lab._workdir})\n")
        return 130
    finally:
        left = sorted(n for n in list_namespaces() - before if n.startswith(lab.lab_id))
        out.write(
            f"teardown: {'left behind: ' + ', '.join(left) if left else 'every namespace deleted'}"
            "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
