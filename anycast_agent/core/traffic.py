"""Traffic engineering per service: damping, drain, staged ramp and MED holds → wanted routes.

Pure and synchronous: `evaluate` takes the service's memory, its quorum decision, the operator
intents and the time, and returns new memory plus the routes wanted (DESIGN §3.3-§3.5).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from anycast_agent.core.health import TargetRecord
from anycast_agent.core.intents import Intents
from anycast_agent.core.policy import Decision, ServiceStatus
from anycast_agent.core.spec import OnDown, Policy, RampMode, ServiceSpec
from anycast_agent.model import (
    GRACEFUL_SHUTDOWN,
    MED_DRAIN,
    MED_MISSING,
    Family,
    RouteAttrs,
    RouteKey,
)

# A drained service is announced with the local AS this many times (3 extra prepends).
DRAIN_PATH_LENGTH = 4


class Phase(enum.StrEnum):
    """What the service's routes are doing, as status and metrics show it."""

    UNKNOWN = "unknown"  # no opinion yet: ExaBGP keeps what it holds
    UP = "up"
    RAMPING = "ramping"
    DOWN = "down"  # withdrawn (or de-preferred with on_down: deprefer)
    SUPPRESSED = "suppressed"  # flap damping keeps it withdrawn
    DRAINING = "draining"  # de-preferred, withdraw after drain_grace
    DRAINED = "drained"  # withdrawn by the operator
    HELD = "held"  # state unreadable: what ExaBGP holds stays, de-preferred; nothing new
    GUARDED = "guarded"  # the fleet guard has not permitted its withdraw: held, de-preferred


@dataclass(frozen=True, slots=True)
class DampingState:
    penalty: float = 0.0
    updated_at: float = 0.0
    suppressed: bool = False

    def decayed(self, now: float, half_life_s: float) -> float:
        if self.penalty <= 0:
            return 0.0
        decay: float = 0.5 ** (max(0.0, now - self.updated_at) / half_life_s)
        return self.penalty * decay


@dataclass(frozen=True, slots=True)
class MedHold:
    """The MED in effect and a candidate that must hold for `med_hold` before it is sent."""

    sent: int | None = None
    candidate: int | None = None
    candidate_since: float = 0.0
    last_change: float = -math.inf


@dataclass(frozen=True, slots=True)
class Memory:
    """Everything the core remembers about one service between evaluations."""

    last_raw: ServiceStatus = ServiceStatus.UNKNOWN  # last decided UP/DOWN, for damping
    was_up: bool = False  # announced (healthy) at the last evaluation
    stage: int = 0  # index into the ramp's stages
    stage_since: float = 0.0
    ramp_held: bool = False
    damping: DampingState = DampingState()
    med: MedHold = MedHold()
    transitions: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    phase: Phase
    reason: str
    stage_percent: int  # 100 when fully announced, 0 when withdrawn
    med: int | None  # the MED announced, None when withdrawn
    penalty: float
    wanted: dict[RouteKey, RouteAttrs | None]
    wake_at: float | None  # when a timer (hold, ramp, damping, drain) needs another look


def sort_communities(communities: tuple[str, ...]) -> tuple[str, ...]:
    # ExaBGP lists communities sorted; sorting ours too lets a respawn compare like with like.
    return tuple(sorted(set(communities), key=lambda c: tuple(int(x) for x in c.split(":"))))


def drained_attrs(service: ServiceSpec) -> RouteAttrs:
    """A de-preferred route (DESIGN §3.5): MED 4294967294, the local AS four times, and the
    GRACEFUL_SHUTDOWN community."""
    return RouteAttrs(
        med=MED_DRAIN,
        as_path=(service.policy.local_as,) * DRAIN_PATH_LENGTH,
        communities=sort_communities((*service.communities, GRACEFUL_SHUTDOWN)),
    )


def held_only(service: ServiceSpec, out: Outcome, held: Collection[RouteKey], why: str) -> Outcome:
    """State unreadable (DESIGN §7): the service's routes ExaBGP holds stay, de-preferred, and
    nothing new is announced, whatever intents the lost file may have held. Health may still
    withdraw (a DOWN outcome is left as it is): the file never does."""
    if out.phase is Phase.DOWN:
        return out
    attrs = drained_attrs(service)
    routes = {k: (attrs if k in held else None) for k in _routes(service, None)}
    stage = 100 if any(routes.values()) else 0
    return replace(
        out, phase=Phase.HELD, reason=why, stage_percent=stage, med=MED_DRAIN, wanted=routes
    )


def computed_med(service: ServiceSpec, decision: Decision, lost: int, load: float | None) -> int:
    """Base MED + capacity penalty (share of targets lost) + load penalty (highest tier met)."""
    policy = service.policy
    capacity = round(policy.capacity_penalty * lost / decision.total) if decision.total else 0
    load_penalty = 0
    if load is not None:
        for tier_load, tier_med in policy.load_tiers:
            if load >= tier_load:
                load_penalty = tier_med
    return min(service.med + capacity + load_penalty, MED_DRAIN - 1)


def extra_prepends(stage_index: int, stages: tuple[int, ...]) -> int:
    """3, 1, 0 for three stages: the AS path halves in length at each stage (4, 2, 1)."""
    if stages[stage_index] >= 100:
        return 0
    return int(2 ** (len(stages) - 1 - stage_index)) - 1


def _damp(mem: Memory, raw: ServiceStatus, policy: Policy, now: float) -> Memory:
    d = policy.damping
    if not d.enabled:
        return replace(mem, damping=DampingState()) if mem.damping.penalty else mem
    damping = mem.damping
    penalty = damping.decayed(now, d.half_life)
    flapped = (
        raw is not ServiceStatus.UNKNOWN
        and mem.last_raw is not ServiceStatus.UNKNOWN
        and raw is not mem.last_raw
    )
    if flapped:
        penalty += d.penalty
    suppressed = damping.suppressed
    if penalty > d.suppress:
        suppressed = True
    elif suppressed and penalty < d.reuse:
        suppressed = False
    if flapped or suppressed != damping.suppressed or penalty != damping.penalty:
        damping = DampingState(penalty, now, suppressed)
    return replace(mem, damping=damping)


def _reuse_at(mem: Memory, policy: Policy) -> float | None:
    d = policy.damping
    if not mem.damping.suppressed or mem.damping.penalty <= 0:
        return None
    return mem.damping.updated_at + d.half_life * math.log2(mem.damping.penalty / d.reuse)


def _hold_med(
    hold: MedHold, target: int, policy: Policy, now: float
) -> tuple[MedHold, float | None]:
    """Apply med_hold and min_update_interval; returns the hold and when to look again."""
    if hold.sent is None:
        return MedHold(sent=target, last_change=now), None
    if target == hold.sent:
        return (replace(hold, candidate=None) if hold.candidate is not None else hold), None
    if hold.candidate != target:
        hold = replace(hold, candidate=target, candidate_since=now)
    ready_at = max(
        hold.candidate_since + policy.med_hold_s, hold.last_change + policy.min_update_interval_s
    )
    if now >= ready_at:
        return MedHold(sent=target, last_change=now), None
    return hold, ready_at


def _routes(
    service: ServiceSpec,
    attrs: RouteAttrs | None,
    neighbor_share: int = 100,
    prefix_share: int = 100,
) -> dict[RouteKey, RouteAttrs | None]:
    """Every (neighbor, prefix) of the service: `attrs` on the announced share, None elsewhere.

    Shares are percentages: ceil(p·N) of the neighbors carrying each prefix's family (in config
    order) and ceil(p·P) of the prefixes (in config order).
    """
    wanted: dict[RouteKey, RouteAttrs | None] = {}
    prefixes = service.prefixes
    chosen = set(prefixes[: math.ceil(prefix_share * len(prefixes) / 100)])
    for prefix in prefixes:
        carriers = [n for n in service.neighbors if Family.of(prefix) in n.families]
        reach = math.ceil(neighbor_share * len(carriers) / 100)
        for index, neighbor in enumerate(carriers):
            on = attrs is not None and prefix in chosen and index < reach
            wanted[RouteKey(neighbor.address, str(prefix))] = attrs if on else None
    return wanted


def _stage_routes(
    service: ServiceSpec,
    stage: int,
    med: int,
    communities: tuple[str, ...],
) -> dict[RouteKey, RouteAttrs | None]:
    """The routes of one ramp stage (DESIGN §3.4)."""
    policy = service.policy
    percent = policy.stages[stage]
    if percent >= 100:
        return _routes(service, RouteAttrs(med=med, communities=communities))
    match policy.ramp_mode:
        case RampMode.NEIGHBORS:
            attrs = RouteAttrs(med=med, communities=communities)
            return _routes(service, attrs, neighbor_share=percent)
        case RampMode.PREFIXES:
            attrs = RouteAttrs(med=med, communities=communities)
            return _routes(service, attrs, prefix_share=percent)
        case _:
            attrs = RouteAttrs(
                med=med,
                as_path=(policy.local_as,) * (1 + extra_prepends(stage, policy.stages)),
                communities=sort_communities((*communities, GRACEFUL_SHUTDOWN)),
            )
            return _routes(service, attrs)


def evaluate(
    service: ServiceSpec,
    mem: Memory,
    decision: Decision,
    lost: int,
    load: float | None,
    intents: Intents,
    now: float,
    drained_at: float | None,
    held: Collection[RouteKey] = (),
) -> tuple[Memory, Outcome]:
    """One decision step for one service. `now` is monotonic; `drained_at` is the monotonic
    time the earliest drain that applies began (None: not drained); `held` is what ExaBGP
    holds (a drain only de-prefers those routes)."""
    policy = service.policy
    raw = decision.status
    mem = _damp(mem, raw, policy, now)
    if raw is not ServiceStatus.UNKNOWN and raw is not mem.last_raw:
        transitions = mem.transitions + (mem.last_raw is not ServiceStatus.UNKNOWN)
        mem = replace(mem, last_raw=raw, transitions=transitions)
    penalty = mem.damping.decayed(now, policy.damping.half_life) if policy.damping.enabled else 0
    communities = sort_communities(service.communities)
    drain = intents.drain_of(service.name)
    wakes: list[float] = []

    def outcome(
        mem: Memory,
        phase: Phase,
        reason: str,
        stage: int,
        med: int | None,
        wanted: dict[RouteKey, RouteAttrs | None],
    ) -> tuple[Memory, Outcome]:
        reuse = _reuse_at(mem, policy)
        all_wakes = [w for w in (*wakes, reuse) if w is not None]
        return mem, Outcome(
            phase, reason, stage, med, penalty, wanted, min(all_wakes, default=None)
        )

    withdrawn = _routes(service, None)
    if drain is not None:
        mem = replace(mem, was_up=False, med=MedHold())
        # The grace runs from the earliest drain that applies (a service drain added during a
        # PoP drain must not start the grace, and a re-announce, over again), on the monotonic
        # clock: a wall-clock step neither cuts nor stretches it.
        left = policy.drain_grace_s - (now - (now if drained_at is None else drained_at))
        why = f"drained by {drain.author}: {drain.reason}"
        if left > 0 and raw is ServiceStatus.UNKNOWN:
            wakes.append(now + left)
            return outcome(mem, Phase.UNKNOWN, f"{why}; {decision.reason}", 0, None, {})
        if left > 0 and raw is ServiceStatus.UP and not mem.damping.suppressed:
            wakes.append(now + left)
            attrs = drained_attrs(service)
            # Only what is announced now is de-preferred: a drain never announces anything new.
            routes = {k: (attrs if k in held else None) for k in withdrawn}
            return outcome(
                mem, Phase.DRAINING, f"{why}; withdraw in {left:.0f}s", 100, MED_DRAIN, routes
            )
        return outcome(mem, Phase.DRAINED, why, 0, None, withdrawn)

    if raw is ServiceStatus.UNKNOWN:
        # Nothing is sent until the state is known: ExaBGP keeps what it holds meanwhile.
        return outcome(mem, Phase.UNKNOWN, decision.reason, 0, None, {})
    if mem.damping.suppressed:
        mem = replace(mem, was_up=False, med=MedHold())
        return outcome(
            mem,
            Phase.SUPPRESSED,
            f"flap damping: penalty {penalty:.0f} above reuse {policy.damping.reuse:g}",
            0,
            None,
            withdrawn,
        )
    if raw is ServiceStatus.DOWN:
        mem = replace(mem, was_up=False, med=MedHold())
        if service.on_down is OnDown.DEPREFER:
            attrs = RouteAttrs(med=service.med_down, communities=communities)
            return outcome(
                mem,
                Phase.DOWN,
                decision.reason,
                100,
                service.med_down,
                _routes(service, attrs),
            )
        return outcome(mem, Phase.DOWN, decision.reason, 0, None, withdrawn)

    if not mem.was_up:
        mem = replace(mem, was_up=True, stage=0, stage_since=now, ramp_held=False)
    last = len(policy.stages) - 1
    if mem.stage < last and not mem.ramp_held:
        if now - mem.stage_since >= policy.stage_hold_s:
            mem = replace(mem, stage=mem.stage + 1, stage_since=now)
        if mem.stage < last:
            wakes.append(mem.stage_since + policy.stage_hold_s)
    stage = min(mem.stage, last)
    percent = policy.stages[stage]

    target = computed_med(service, decision, lost, load)
    hold, wake = _hold_med(mem.med, target, policy, now)
    mem = replace(mem, med=hold)
    if wake is not None:
        wakes.append(wake)
    assert hold.sent is not None
    override = intents.med_of(service.name)
    med = override.med if override is not None else hold.sent

    wanted = _stage_routes(service, stage, med, communities)
    phase = Phase.UP if percent >= 100 else Phase.RAMPING
    reason = decision.reason
    if phase is Phase.RAMPING:
        reason += f"; ramp {percent}% ({policy.ramp_mode.value})" + (
            " held" if mem.ramp_held else ""
        )
    if override is not None:
        reason += f"; MED {override.med} set by {override.author}: {override.reason}"
    elif hold.candidate is not None:
        reason += f"; MED {hold.candidate} pending (holding {hold.sent})"
    return outcome(mem, phase, reason, percent, med, wanted)


def adopt(
    service: ServiceSpec,
    held: Mapping[RouteKey, RouteAttrs],
    now: float,
) -> Memory:
    """Memory for a service whose routes ExaBGP already holds (a respawn, not a first start).

    The held stage and MED are taken as they are, so a respawn never restarts a ramp and a
    MED change still has to hold for `med_hold` from now. Routes held de-preferred (drain, or
    `on_down: deprefer`) mean the service was not up: it ramps when it comes back.
    """
    policy = service.policy
    mine = {k: a for k, a in held.items() if k in _routes(service, None)}
    if not mine:
        return Memory()
    sample = next(iter(mine.values()))
    deprefer = service.on_down is OnDown.DEPREFER and sample.med == service.med_down
    if sample.med == MED_DRAIN or deprefer:
        return Memory(last_raw=ServiceStatus.DOWN)
    held_keys = set(mine)

    def shape(stage: int) -> tuple[set[RouteKey], int]:
        routes = _stage_routes(service, stage, sample.med, ())
        announced = {k for k, a in routes.items() if a is not None}
        path = next((len(a.as_path) for a in routes.values() if a is not None), 0)
        return announced, path

    stages = range(len(policy.stages))
    exact = [i for i in stages if shape(i) == (held_keys, len(sample.as_path))]
    covering = [i for i in stages if shape(i)[0] >= held_keys]
    # The furthest stage that is exactly what ExaBGP holds; failing that, the first stage
    # announcing at least all of it, so nothing held is withdrawn by the adoption itself.
    stage = max(exact) if exact else min(covering, default=len(policy.stages) - 1)
    return Memory(
        last_raw=ServiceStatus.UP,
        was_up=True,
        stage=stage,
        stage_since=now,
        # A route held with no MED was not the agent's: its MED goes out at once.
        med=MedHold() if sample.med == MED_MISSING else MedHold(sent=sample.med, last_change=now),
    )


def change_line(
    name: str, before: Outcome | None, after: Outcome, records: Sequence[TargetRecord]
) -> str | None:
    """The log line of a service whose phase, stage or MED changed (None: nothing changed)."""
    if before is None and after.phase is Phase.UNKNOWN:
        return None
    if before is not None and (before.phase, before.stage_percent, before.med) == (
        after.phase,
        after.stage_percent,
        after.med,
    ):
        return None
    lost = [
        f"{r.spec.name} {r.health.state}"
        + (f" ({r.last.reason})" if r.last and r.last.reason else "")
        for r in records
        if not r.health.counts_healthy
    ]
    tail = f"; {', '.join(lost)}" if lost and after.phase is not Phase.UP else ""
    was = before.phase if before else Phase.UNKNOWN
    return f"service {name} {was} -> {after.phase}: {after.reason}{tail}"
