"""Fleet safety, the pure part (DESIGN §3.7, FLEET.md §3.4-§3.5): the coordination mode, the
guard's decision, the withdrawals that wait for it, and the state each PoP publishes.

Without `fleet:` the mode is STANDALONE and nothing here changes a route. With it, every
announced → withdrawn transition of a service needs a permit from the guard (a K-witness etcd
transaction the shell runs, `guard_decision` deciding from what it read). Until a permit comes
the routes stay as they are; a refusal, or no etcd (DEGRADED), leaves them de-preferred.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from anycast_agent.core.commands import AskGuard, Command, Publish, info, warn
from anycast_agent.core.spec import ServiceSpec
from anycast_agent.core.traffic import Outcome, Phase, drained_attrs
from anycast_agent.model import (
    MED_DRAIN,
    Announcing,
    FleetMode,
    NeighborState,
    RefusalReason,
    RouteAttrs,
    RouteKey,
    WithdrawKind,
)

if TYPE_CHECKING:
    from anycast_agent.core.pop import Pop

# A refused withdraw asks again on every view change, and at least this often.
REASK_S = 5.0


COUNTING = frozenset({Announcing.ANNOUNCED, Announcing.DEPREFERRED})


@dataclass(frozen=True, slots=True)
class Seen:
    state: Announcing
    mod_revision: int


@dataclass(frozen=True, slots=True)
class GuardView:
    """What the guard read for one service: every PoP's published state, the policy, the
    freeze, an operator override for this PoP, and the free budget slots."""

    pop: str
    kind: WithdrawKind
    states: Mapping[str, Seen]
    min_pops: int
    frozen: bool = False
    override: bool = False
    free_slots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Permit:
    """The guard allows the withdraw if, in one transaction, these witnesses are unchanged and
    this budget slot is free (None: a drain takes none)."""

    witnesses: tuple[str, ...]
    slot: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    detail: str


def guard_decision(view: GuardView) -> Permit | Refused:
    """Permit a withdraw only if `min_pops` other PoPs announce (an operator override lifts
    that for this PoP), the fleet is not frozen, and a health withdraw finds a budget slot."""
    others = sorted(p for p, s in view.states.items() if p != view.pop and s.state in COUNTING)
    if not view.override and len(others) < view.min_pops:
        detail = f"{len(others)} other PoP(s) announce, min_pops is {view.min_pops}"
        return Refused(RefusalReason.TOO_FEW, detail)
    if view.kind is WithdrawKind.DRAIN:
        return Permit(() if view.override else tuple(others[: view.min_pops]), None)
    if view.frozen:
        return Refused(RefusalReason.FROZEN, "ctl/freeze is set")
    if not view.free_slots:
        return Refused(RefusalReason.BUDGET, "every budget slot is taken")
    return Permit(() if view.override else tuple(others[: view.min_pops]), view.free_slots[0])


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the shell last saw of etcd (monotonic seconds)."""

    last_ok: float | None  # the last successful keepalive or linearizable call
    lease: bool  # the session lease is granted and alive
    watch_down_since: float | None  # the ctl/ watch is down since (None: up)
    published: bool  # the agent's own states are written under its current lease


def next_mode(
    mode: FleetMode, seen: Liveness, now: float, stale_after_s: float, watch_grace_s: float
) -> tuple[FleetMode, str]:
    """CONNECTED needs a lease, a live watch and the own states re-published; DEGRADED comes
    after `stale_after_s` without a successful call or `watch_grace_s` without the watch."""
    if mode is FleetMode.STANDALONE:
        return mode, ""
    stale = seen.last_ok is None or now - seen.last_ok > stale_after_s
    blind = seen.watch_down_since is not None and now - seen.watch_down_since > watch_grace_s
    if mode is FleetMode.CONNECTED:
        if stale:
            return FleetMode.DEGRADED, f"no answer from etcd for {stale_after_s:g}s"
        if blind:
            return FleetMode.DEGRADED, f"the ctl/ watch is down for {watch_grace_s:g}s"
        if not seen.lease:
            return FleetMode.DEGRADED, "the session lease is lost"
        return mode, ""
    if not stale and seen.lease and seen.watch_down_since is None and seen.published:
        return FleetMode.CONNECTED, "lease, view and own states are fresh"
    return mode, ""


@dataclass(frozen=True, slots=True)
class GuardState:
    """Where one service's withdraw stands with the guard, as status shows it."""

    asking: WithdrawKind | None = None
    permitted: bool = False
    refused: RefusalReason | None = None
    detail: str = ""
    refused_at: float = 0.0
    refused_view: int = -1  # the view the refused question was asked at
    asked_view: int = -1  # the view the question out was asked at

    def describe(self) -> str:
        if self.permitted:
            return "withdraw permitted by the fleet guard"
        refused = f"withdraw refused: {self.refused} ({self.detail})" if self.refused else ""
        asking = f"asking the fleet guard ({self.asking} withdraw)" if self.asking else ""
        return "; ".join(x for x in (refused, asking) if x)


class FleetGate:
    """The core's side of the guard: holds every PoP-level withdraw until it is permitted."""

    def __init__(self, enabled: bool, pop: str) -> None:
        self.pop = pop
        self.mode = FleetMode.DEGRADED if enabled else FleetMode.STANDALONE
        self.why = "not connected to etcd yet" if enabled else ""
        self.services: dict[str, GuardState] = {}
        self.refusals: dict[RefusalReason, int] = {}
        self.view = 0  # bumped on every change the shell saw in the fleet's keys
        self.publishing: dict[str, Announcing] = {}
        self.overridden: set[str] = set()  # drained by break-glass: withdrawn without a permit

    @property
    def enabled(self) -> bool:
        return self.mode is not FleetMode.STANDALONE

    def mode_changed(self, mode: FleetMode, why: str) -> list[Command]:
        self.mode, self.why = mode, why
        self.view += 1
        if mode is FleetMode.DEGRADED:
            return [
                warn(f"fleet DEGRADED ({why}): no withdraw is granted, routes stay as they are")
            ]
        return [info(f"fleet {mode} ({why})")]

    def answered(
        self, service: str, reason: RefusalReason | None, detail: str, now: float
    ) -> list[Command]:
        """The guard's answer: permitted (`reason` None) or refused."""
        if reason is None:
            self.services[service] = GuardState(permitted=True)
            return [info(f"fleet guard permits withdrawing {service}")]
        self._refuse(service, reason, detail, now)
        return [warn(f"fleet guard refuses withdrawing {service} ({reason}: {detail})")]

    def _refuse(self, service: str, reason: RefusalReason, detail: str, now: float) -> None:
        """A refusal stands for the view its question saw: a change in the fleet while the
        question was out asks again at once."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        asked = self.services.get(service, GuardState()).asked_view
        view = asked if asked >= 0 else self.view
        self.services[service] = GuardState(None, False, reason, detail, now, view)

    def guard(
        self,
        svc: ServiceSpec,
        out: Outcome,
        held: Mapping[RouteKey, RouteAttrs],
        now: float,
        override: bool = False,
        recovering: bool = False,
    ) -> tuple[Outcome, list[Command]]:
        """The outcome the routes may follow: a withdraw of every held route of the service
        waits for a permit; with a refusal, or while DEGRADED, they stay de-preferred. A
        break-glass drain (`override`) withdraws without one. A held health withdraw is not
        asked for again while a target is `recovering`: it would withdraw a PoP coming back."""
        if not self.enabled:
            return out, []
        if override and out.phase is Phase.DRAINED:
            if svc.name not in self.overridden:
                self.overridden.add(svc.name)
                self.services.pop(svc.name, None)
                return out, [
                    warn(f"withdrawing {svc.name} WITHOUT the fleet guard: drain --override-fleet")
                ]
            return out, []
        self.overridden.discard(svc.name)
        mine = {k: held[k] for k in out.wanted if k in held}
        if not mine or any(out.wanted.values()):  # not a withdraw of the service at this PoP
            self.services.pop(svc.name, None)
            return out, []
        state = self.services.get(svc.name, GuardState())
        if state.permitted:
            return out, []
        kind = WithdrawKind.DRAIN if out.phase is Phase.DRAINED else WithdrawKind.HEALTH
        held_back = kind is WithdrawKind.HEALTH and state.refused is not None and recovering
        asks, due = ([], None) if held_back else self._ask(svc.name, kind, now)
        wake = out.wake_at if due is None else min(due, out.wake_at or due)
        state = self.services.get(svc.name, state)
        if state.refused is None:  # the first ask: the routes stay as they are until answered
            routes: dict[RouteKey, RouteAttrs | None] = {k: mine.get(k) for k in out.wanted}
            med = next(iter(mine.values())).med
        else:
            med = MED_DRAIN
            attrs = drained_attrs(svc)
            routes = {k: (attrs if k in mine else None) for k in out.wanted}
        why = f"{out.reason}; {state.describe()}"
        guarded = replace(
            out, phase=Phase.GUARDED, reason=why, med=med, wanted=routes, wake_at=wake
        )
        return guarded, asks

    def _ask(self, name: str, kind: WithdrawKind, now: float) -> tuple[list[Command], float | None]:
        """Ask the guard about `name` unless a question is out, DEGRADED refuses at once, or
        a refusal stands (until the view changes, or REASK_S: then the time to look again)."""
        state = self.services.get(name, GuardState())
        if state.asking is not None:
            return [], None
        if self.mode is FleetMode.DEGRADED:
            if state.refused is RefusalReason.DEGRADED:
                return [], None
            self._refuse(name, RefusalReason.DEGRADED, self.why, now)
            return [warn(f"fleet degraded: {name} kept de-preferred, not withdrawn")], None
        due = state.refused_at + REASK_S
        if state.refused is not None and state.refused_view == self.view and now < due:
            return [], due
        self.services[name] = replace(state, asking=kind, asked_view=self.view)
        return [AskGuard(name, kind)], None

    def drain_out(
        self,
        gone: dict[RouteKey, RouteAttrs | None],
        owner: Mapping[RouteKey, str],
        held: Mapping[RouteKey, RouteAttrs],
        now: float,
        configured: set[str],
    ) -> tuple[dict[RouteKey, RouteAttrs | None], list[Command], float | None]:
        """Routes the config dropped, due to go: those of a known former service wait for the
        guard under its name (kept as held, de-preferred) and go once it permits."""
        if not self.enabled:
            return gone, [], None
        leaving: dict[str, list[RouteKey]] = {}
        for key, attrs in gone.items():
            if attrs is None and key in owner and key in held:
                leaving.setdefault(owner[key], []).append(key)
        former = set(owner.values()) - configured
        for name in [n for n in self.services if n not in configured and n not in former]:
            del self.services[name]  # a drained-out service that is gone: its permit too
        out, asks, wakes = dict(gone), [], []
        for name, keys in sorted(leaving.items()):
            if self.services.get(name, GuardState()).permitted:
                continue
            out.update({k: held[k] for k in keys})
            more, due = self._ask(name, WithdrawKind.DRAIN, now)
            asks += more
            wakes += [due] if due is not None else []
        return out, asks, min(wakes, default=None)

    def publish(self, states: dict[str, Announcing]) -> list[Command]:
        """A Publish of every service's state when one changed (the shell writes the diff)."""
        if not self.enabled or states == self.publishing:
            return []
        self.publishing = states
        return [Publish(tuple(sorted(states.items())))]


def announcing(
    wanted_keys: list[RouteKey],
    held: Mapping[RouteKey, RouteAttrs],
    established: set[str],
    channel_up: bool,
) -> Announcing:
    """What a service's routes are at this PoP, from ExaBGP's acknowledged RIB."""
    sessions = {k.neighbor for k in wanted_keys}
    if not channel_up or not sessions & established:
        return Announcing.SILENT
    live = [held[k] for k in wanted_keys if k in held and k.neighbor in established]
    if not live:
        return Announcing.WITHDRAWN
    if all(a.med == MED_DRAIN for a in live):
        return Announcing.DEPREFERRED
    return Announcing.ANNOUNCED


def published_states(pop: Pop) -> dict[str, Announcing]:
    """Every service's state for the fleet, from what ExaBGP acknowledged; a granted withdraw
    is W from the permit on, so no other PoP counts one that is leaving."""
    up = {n for n, s in pop.neighbors.items() if s is NeighborState.ESTABLISHED}
    granted = {n for n, g in pop.fleet.services.items() if g.permitted}
    keys: dict[str, list[RouteKey]] = {s.name: pop.keys_of(s.name) for s in pop.spec.services}
    for key, name in pop.orphans.owner.items():  # a former service, drained out: D until W
        if name not in pop.services:
            keys.setdefault(name, []).append(key)
    return {
        name: Announcing.WITHDRAWN
        if name in granted
        else announcing(routes, pop.rib.held, up, pop.channel_up)
        for name, routes in keys.items()
    }
