"""`make demo`: the two-PoP failover, run in network namespaces, printed as a timeline.

The client reaches the anycast address 192.0.2.10 at PoP 1; PoP 1's edges are killed, its agent
withdraws, the upstream moves to PoP 2 and so does the client; the edges come back and PoP 1
ramps back in (AS-path prepends while ramping, so the upstream keeps PoP 2 until 100 %).
Every namespace is deleted on any exit, Ctrl-C included. Installs nothing: `make demo` does.

    python -m tests.lab.demo [--quick] [--exabgp-version 4.2|5.0]
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from tests.lab.exabgp import EXABGP_VERSIONS, ExabgpVersion
from tests.lab.netns import list_namespaces
from tests.lab.prereqs import lab_missing
from tests.lab.topology_description import DEMO_TIMERS, QUICK_TIMERS, Timers
from tests.lab.twopop import Client, Gap, RouteState, TwoPopLab, measure_gap
from tests.lab.wait import wait_for

_AGENT_LINE = re.compile(r" INFO ((?:announce|withdraw|service|ramp|target) .*)$")


@dataclass
class Timeline:
    """Prints one line per event with what the upstream and the client see at that moment;
    `poll` turns route, answer and agent-log changes into events of their own."""

    lab: TwoPopLab
    out: TextIO
    t0: float = field(default_factory=time.monotonic)
    client: Client | None = None
    route: RouteState | None = None
    answer: str = "-"
    _log_offsets: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def event(self, text: str, at: float | None = None) -> None:
        t = (time.monotonic() if at is None else at) - self.t0
        route = str(self.route) if self.route is not None else "-"
        line = f"t=+{t:6.2f}s  {text:<72.72}  upstream: {route:<36}  answered-by: {self.answer}"
        self.lines.append(line)
        self.out.write(line + "\n")
        self.out.flush()

    def poll(self) -> RouteState:
        for name, pop in self.lab.pops.items():
            log = pop.log()
            offset = self._log_offsets.get(name, 0)
            complete = log[offset:].rpartition("\n")[0]
            if complete:
                self._log_offsets[name] = offset + len(complete) + 1
                for raw in complete.splitlines():
                    match = _AGENT_LINE.search(raw)
                    if match:
                        self.event(f"[{name} agent] {match[1]}")
        route = self.lab.route_state()
        if route != self.route:
            self.route = route
            self.event("upstream best path changed")
        if self.client is not None:
            samples = self.client.samples()
            if samples:
                last = samples[-1]
                answer = last.answer or f"no answer ({last.error.split(':')[0]})"
                if answer != self.answer:
                    self.answer = answer
                    self.event(f"client: answers now come from {answer}", at=last.t)
        return route

    def wait(self, predicate: Callable[[Timeline], bool], *, timeout_s: float, what: str) -> float:
        """Poll (printing events) until `predicate(self)` holds; the seconds it took."""

        def observe() -> bool:
            self.poll()
            return predicate(self)

        return wait_for(observe, timeout_s=timeout_s, interval_s=0.05, what=what)


@dataclass(frozen=True)
class Result:
    withdraw_s: float  # edges killed -> upstream's best path via pop2
    client_moved_s: float  # edges killed -> first answer from pop2
    failover: Gap
    reannounce_s: float  # edges restored -> upstream's best path via pop1, full (no prepends)
    client_back_s: float  # edges restored -> first answer from pop1
    recovery: Gap
    ramp: bool
    saw_ramp_stage: bool  # pop1 announced with prepends while pop2 stayed best


def _best_via(pop: str, *, full: bool = True) -> Callable[[Timeline], bool]:
    def check(timeline: Timeline) -> bool:
        state = timeline.route
        if state is None or state.pop != pop:
            return False
        return not full or (
            len(state.as_path) == 1 and state.med == timeline.lab.pops[pop].spec.med
        )

    return check


def run_scenario(lab: TwoPopLab, timeline: Timeline, *, client_budget_s: float) -> Result:
    """Start both PoPs, fail PoP 1's edges, restore them; measure at the upstream and client."""
    timers = lab.timers
    settle_s = (timers.rise + 2) * timers.interval_s + 5 * timers.stage_hold_s + 15
    for pop in lab.pops.values():
        pop.start()
        timeline.event(
            f"{pop.name}: ExaBGP {lab.exabgp_version} + agent started, med {pop.spec.med}"
            + ("" if pop.ramp else " (agent config has no ramp)")
        )
    meds = {name: pop.spec.med for name, pop in lab.pops.items()}

    def settled(tl: Timeline) -> bool:
        paths = tl.lab.paths()
        return set(paths) == set(meds) and all(
            len(p.as_path) == 1 and p.med == meds[name] for name, p in paths.items()
        )

    timeline.wait(settled, timeout_s=settle_s, what="both PoPs announced at full preference")
    timeline.wait(_best_via("pop1"), timeout_s=settle_s, what="best path via pop1")
    timeline.event("both PoPs up; the upstream prefers pop1 (lower MED)")

    client = lab.start_client(max_s=client_budget_s)
    timeline.client = client
    timeline.event(
        f"client loop started: GET http://{lab.description.vip}/ every "
        f"{client.interval_s * 1000:.0f} ms, at most {client.max_requests} requests / "
        f"{client.max_s:.0f} s"
    )
    timeline.wait(lambda _: timeline.answer == "pop1", timeout_s=10, what="client at pop1")

    pop1 = lab.pops["pop1"]
    pids = ", ".join(str(e.pid) for e in pop1.edges)
    killed = time.monotonic()
    pop1.fail_edges()
    timeline.event(f"killed pop1's edge servers (SIGKILL pids {pids})", at=killed)
    fail_bound = timers.fall * timers.interval_s + timers.timeout_s + 5
    timeline.wait(_best_via("pop2", full=False), timeout_s=fail_bound, what="pop2")
    withdraw_s = time.monotonic() - killed
    timeline.event(f"withdraw seen at the upstream {withdraw_s * 1000:.0f} ms after the kill")
    moved = client.wait_answer("pop2", timeout_s=5, since=killed)
    timeline.wait(lambda _: timeline.answer == "pop2", timeout_s=5, what="client at pop2")
    timeline.event(f"client answered by pop2 {(moved.t - killed) * 1000:.0f} ms after the kill")

    restored = time.monotonic()
    pop1.restore_edges()
    timeline.event("restarted pop1's edge servers", at=restored)
    saw_stage: list[bool] = [False]

    def back_at_pop1(tl: Timeline) -> bool:
        state = tl.route
        if state is not None and state.pop == "pop2" and state.paths == 2:
            saw_stage[0] = True
        return _best_via("pop1")(tl)

    # rise, two ramp stages, then the held MED and the minimum update interval.
    back_bound = (timers.rise + 2) * timers.interval_s + 5 * timers.stage_hold_s + 10
    timeline.wait(back_at_pop1, timeout_s=back_bound, what="pop1 back")
    reannounce_s = time.monotonic() - restored
    timeline.event(f"pop1 best again {reannounce_s * 1000:.0f} ms after the edges came back")
    back = client.wait_answer("pop1", timeout_s=5, since=restored)
    timeline.wait(lambda _: timeline.answer == "pop1", timeout_s=5, what="client at pop1")
    timeline.event(f"client answered by pop1 {(back.t - restored) * 1000:.0f} ms after restore")
    client.stop()
    samples = client.samples()
    timeline.event(f"client loop stopped after {len(samples)} requests")
    return Result(
        withdraw_s=withdraw_s,
        client_moved_s=moved.t - killed,
        failover=measure_gap(samples, "pop1", "pop2", killed),
        reannounce_s=reannounce_s,
        client_back_s=back.t - restored,
        recovery=measure_gap(samples, "pop2", "pop1", restored),
        ramp=pop1.ramp,
        saw_ramp_stage=saw_stage[0],
    )


def summary(result: Result, timers: Timers) -> list[str]:
    ramp = (
        f"ramp 25/50/100 %, {timers.stage_hold_s:g} s per stage"
        if result.ramp
        else "no ramp (this agent's config does not accept `ramp`)"
    )
    return [
        f"timers: interval {timers.interval_s:g} s, timeout {timers.timeout_s:g} s, "
        f"fall {timers.fall}, rise {timers.rise}; {ramp}",
        f"edge kill -> withdraw at the upstream:   {result.withdraw_s * 1000:7.0f} ms",
        f"edge kill -> client answered by pop2:    {result.client_moved_s * 1000:7.0f} ms",
        f"client-observed gap pop1 -> pop2:        {result.failover.gap_s * 1000:7.0f} ms "
        f"({result.failover.failed} failed requests)",
        f"edges back -> pop1 best at the upstream: {result.reannounce_s * 1000:7.0f} ms"
        + (" (pop1 ramped with prepends; pop2 kept the traffic)" if result.saw_ramp_stage else ""),
        f"edges back -> client answered by pop1:   {result.client_back_s * 1000:7.0f} ms",
        f"client-observed gap pop2 -> pop1:        {result.recovery.gap_s * 1000:7.0f} ms "
        f"({result.recovery.failed} failed requests)",
    ]


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI timers (faster, less to read)")
    parser.add_argument("--exabgp-version", choices=EXABGP_VERSIONS, default="5.0")
    args = parser.parse_args(argv)
    version: ExabgpVersion = args.exabgp_version
    missing = lab_missing(version)
    if missing:
        out.write("the demo needs: " + "; ".join(missing) + " (run `make demo` as root)\n")
        return 2
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, through the lab's teardown; SIGINT
    # is set too because a shell's background job inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_keyboard_interrupt)
    timers = QUICK_TIMERS if args.quick else DEMO_TIMERS
    before = list_namespaces()
    lab = TwoPopLab(exabgp_version=version, timers=timers)
    out.write(
        "two-PoP anycast lab: client -> upstream (BIRD, AS 65000) -> pop1 (med 100) | "
        "pop2 (med 200), VIP 192.0.2.10\n"
    )
    try:
        with lab:
            names = ", ".join(ns.name for ns in lab.namespaces.values())
            out.write(f"namespaces: {names}\n\n")
            timeline = Timeline(lab, out)
            result = run_scenario(lab, timeline, client_budget_s=40 if args.quick else 90)
            out.write("\n" + "\n".join(summary(result, timers)) + "\n")
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
