"""Per-target health state machine: probe results in, state transitions out (DESIGN §3.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anycast_agent.core.commands import StartProbe, StopProbe
from anycast_agent.core.spec import PopSpec, TargetSpec
from anycast_agent.model import CheckerFault, ProbeResult, TargetState

if TYPE_CHECKING:
    from anycast_agent.core.snapshot import TargetSnapshot

S = TargetState


@dataclass(frozen=True, slots=True)
class Health:
    """A target's state and its consecutive success/failure counts."""

    state: TargetState = S.UNKNOWN
    successes: int = 0
    failures: int = 0

    @property
    def counts_healthy(self) -> bool:
        # A suspicious target has not failed `fall` times yet: it still carries traffic.
        return self.state in (S.HEALTHY, S.SUSPICIOUS)

    @property
    def decided(self) -> bool:
        return self.state is not S.UNKNOWN


def observe(h: Health, ok: bool, *, rise: int, fall: int) -> Health:
    """The health after one more probe result."""
    successes = h.successes + 1 if ok else 0
    failures = 0 if ok else h.failures + 1
    match h.state, ok:
        case ((S.UNKNOWN | S.RECOVERING | S.UNHEALTHY), True):
            state = (
                S.HEALTHY
                if successes >= rise
                else (S.UNKNOWN if h.state is S.UNKNOWN else S.RECOVERING)
            )
        case ((S.HEALTHY | S.SUSPICIOUS), True):
            state = S.HEALTHY
        case ((S.UNKNOWN | S.HEALTHY | S.SUSPICIOUS), False):
            if failures >= fall:
                state = S.UNHEALTHY
            else:
                state = S.UNKNOWN if h.state is S.UNKNOWN else S.SUSPICIOUS
        case ((S.RECOVERING | S.UNHEALTHY), False):
            state = S.UNHEALTHY
        case _:  # pragma: no cover - the match above is exhaustive
            raise AssertionError(h.state)
    return Health(state, successes, failures)


@dataclass(slots=True)
class TargetRecord:
    """One target as the core tracks it: its health, its last result and its counters."""

    spec: TargetSpec
    health: Health = Health()
    last: ProbeResult | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    transitions: int = 0
    bugs: int = 0  # results of probe code that raised
    checker: CheckerFault | None = None  # the checker fault the last result was
    fault_since: float | None = None  # when the current run of checker faults began
    # The record as snapshots show it, made by the first snapshot after a change and shared by
    # the next ones until the record changes again (every change goes through report or skip).
    view: TargetSnapshot | None = field(default=None, compare=False, repr=False)

    def report(self, result: ProbeResult, now: float) -> str | None:
        """Take one result; the log line it deserves (None: nothing worth a line). A checker
        fault leaves the state machine as it is (DESIGN §3.2a): it says nothing of the target."""
        self.view = None
        self.last = result
        if result.checker is not None:
            began = self.checker is None
            self.checker = result.checker
            self.fault_since = now if self.fault_since is None else self.fault_since
            if not began:
                return None
            return (
                f"checker fault {result.checker} ({result.reason}): the state stays "
                f"{self.health.state} and the service's health is frozen"
            )
        cleared = self.checker is not None
        self.checker = self.fault_since = None
        self.ok += result.ok
        self.failed += not result.ok
        self.bugs += result.bug
        before = self.health.state
        self.health = observe(self.health, result.ok, rise=self.spec.rise, fall=self.spec.fall)
        if self.health.state is not before:
            self.transitions += 1
            why = f": {result.reason}" if result.reason else ""
            return f"{before} -> {self.health.state}{why}"
        return "checker fault over: probing works again" if cleared else None

    def skip(self, slots: int) -> None:
        """Count probe slots skipped because the previous probe was still running."""
        self.view = None
        self.skipped += slots

    def blind_since(self, now: float, limit_s: float) -> bool:
        """Whether checker faults have hidden this target for longer than `limit_s`."""
        return self.fault_since is not None and now - self.fault_since >= limit_s


def carry_targets(
    targets: Mapping[str, list[TargetRecord]], spec: PopSpec
) -> tuple[dict[str, list[TargetRecord]], list[StartProbe | StopProbe]]:
    """The targets of a new config: one that kept its service, name and check keeps its
    history (and its probe runs on); any other starts afresh, unknown."""
    old = {(s, r.spec.name): r for s, records in targets.items() for r in records}
    carried: dict[str, list[TargetRecord]] = {}
    probes: list[StartProbe | StopProbe] = []
    for svc in spec.services:
        records = []
        for t in svc.targets:
            kept = old.pop((svc.name, t.name), None)
            if kept is not None and kept.spec == t:
                records.append(kept)
                continue
            if kept is not None:
                probes.append(StopProbe(svc.name, t.name))
            records.append(TargetRecord(t))
            probes.append(StartProbe(svc.name, t))
        carried[svc.name] = records
    probes += [StopProbe(service, name) for service, name in old]
    return carried, probes


def capacity(records: Sequence[TargetRecord]) -> tuple[int, float | None]:
    """Targets lost (unhealthy, or recovering: not carrying traffic yet) and the mean load the
    healthy ones report (None when none reports one): the inputs of the capacity and load
    penalties (DESIGN §3.3)."""
    lost = sum(r.health.state in (S.UNHEALTHY, S.RECOVERING) for r in records)
    loads = [
        r.last.load
        for r in records
        if r.health.counts_healthy and r.last is not None and r.last.load is not None
    ]
    return lost, (sum(loads) / len(loads) if loads else None)
