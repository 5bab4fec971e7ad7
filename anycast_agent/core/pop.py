"""The whole PoP as one sans-I/O state machine: events in, commands out, time passed in.

`Pop` owns target health, each service's memory (stage, MED hold, damping), the RIB as ExaBGP
acknowledged it, the VIP gate and the operator intents. Its surface is `handle(event)`,
`next_deadline()` and `snapshot()`; the Agent only turns inputs into events and executes the
commands. Route commands come out of decision steps only (`Synced` is followed by a `Tick`,
and `Tick` is the decision step), and every one of them is confirmed by a `CommandAcked`
before the RIB counts it; until then its route is in flight and planned no further.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import assert_never

from anycast_agent.core.coalesce import Applied, drain_starts, gate
from anycast_agent.core.commands import (
    Announce,
    Command,
    Log,
    LogLevel,
    Persist,
    Ready,
    RouteCommand,
    info,
    warn,
)
from anycast_agent.core.events import (
    AckResult,
    CanaryObserved,
    ChannelClosed,
    CommandAcked,
    ConfigSwapped,
    Event,
    FleetCtlChanged,
    FleetModeChanged,
    FleetViewChanged,
    GuardAnswered,
    Instant,
    IntentSubmitted,
    NeighborChanged,
    Persisted,
    ProbeObserved,
    ProbeSkipped,
    RibRead,
    Synced,
    Tick,
    VipAdded,
    VipsListed,
)
from anycast_agent.core.fleet import FleetGate, published_states
from anycast_agent.core.fleet_intents import fleet_event
from anycast_agent.core.health import TargetRecord, capacity
from anycast_agent.core.intents import Intents
from anycast_agent.core.lifecycle import acked, canary_observed, reread, swapped, synced
from anycast_agent.core.orphans import Orphans
from anycast_agent.core.policy import Decision, decide
from anycast_agent.core.requests import Pending, persisted, submitted
from anycast_agent.core.rib import Rib
from anycast_agent.core.sessions import Sessions
from anycast_agent.core.snapshot import About, Snapshot, build_snapshot
from anycast_agent.core.spec import PopSpec, ServiceSpec, route_keys
from anycast_agent.core.traffic import (
    Memory,
    Outcome,
    Phase,
    change_line,
    evaluate,
    held_only,
)
from anycast_agent.core.vips import VipGate
from anycast_agent.model import (
    Announcing,
    NeighborState,
    ProbeResult,
    RouteAttrs,
    RouteKey,
    TargetState,
)

# Each step re-evaluates, besides the services with news and those whose timer is due, a slice
# of the others, so every service is looked at again at least every SWEEP_S (load changes, the
# safety net) without one step evaluating them all (200 services stalled probes ~15 ms a step).
TICK_S = 0.25
SWEEP_S = 1.0
# Phases that end a ramp, and with it any operator hold on it.
_RAMP_ENDED = frozenset({Phase.DOWN, Phase.DRAINED, Phase.SUPPRESSED})


class Pop:
    def __init__(
        self,
        spec: PopSpec,
        about: About,
        started: Instant,
        intents: Intents | None = None,
        *,
        state_unreadable: str = "",
    ) -> None:
        self.spec = spec
        self.about = about
        # Why no copy of the state file could be read ("" when one could): until an operator
        # resets it, what ExaBGP holds stays de-preferred and nothing changes (DESIGN §7).
        self.state_unreadable = state_unreadable
        self.intents = intents or Intents()
        self.rib = Rib()
        self.neighbors: dict[str, NeighborState] = {}
        self.targets = {s.name: [TargetRecord(t) for t in s.targets] for s in spec.services}
        self.memory: dict[str, Memory] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.healthy: dict[str, int] = {}
        self.ready = False
        self.channel_up = True
        self.acked: dict[AckResult, int] = {}
        self.synced = False
        self.pending: Pending | None = None  # an operator request being written
        self.write_errors = 0  # Persist commands that failed
        self.corrections = 0  # routes a re-read of ExaBGP's adj-rib-out found wrong
        self._stale: set[str] | None = None  # services with news; None: every service
        self._news_at = started.mono
        self._next_sweep = 0.0
        self._sweep_at = 0
        self._timers: float | None = None
        self._last_probe = self._last_decide = started.mono
        self.vips = VipGate(spec.addresses, spec.vip_interface)
        self.orphans = Orphans()
        self.canary: ProbeResult | None = None  # the last check of the agent's own canary
        self._frozen: dict[str, tuple[Decision, int, float | None]] = {}
        self.drain_starts = drain_starts({}, self.intents, started)
        self.sessions = Sessions()  # per-session drains, and sessions ramping back
        self.applied: dict[str, Applied] = {}  # the intents each service's routes follow now
        self.fleet = FleetGate(spec.fleet, spec.pop)
        self.fleet_ctl: tuple[Mapping[str, bytes], int] = ({}, 0)  # ctl/ keys, revision
        self.fleet_problems: tuple[str, ...] = ()  # ctl/ keys ignored, and why
        self.fleet_revision = 0  # the ctl/ revision the intents follow
        self.fleet_drained_by: dict[str, str] = {}  # service: "intent" or "ramp"
        self._snap: Snapshot | None = None
        self.use(spec)

    # -- the surface -------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; the commands the shell must execute, in order."""
        match event:
            case ProbeObserved():
                return self._observed(event)
            case ProbeSkipped(service=service, target=target, slots=slots):
                record = self._record(service, target)
                if record is not None:
                    record.skip(slots)
                return [warn(f"target {service}/{target}: probe overran, {slots} slot(s) skipped")]
            case Tick(at=at):
                out = self._step(at)
            case Synced():
                out = synced(self, event)
            case CommandAcked():
                out = acked(self, event)
            case NeighborChanged(neighbor=peer, state=state, reason=reason):
                self.neighbors[peer] = state
                if state is NeighborState.ESTABLISHED:
                    self.rib.resend_neighbor(peer)
                    self.news(event.at)
                out = [info(f"neighbor {peer} {state}" + (f" ({reason})" if reason else ""))]
            case VipsListed():
                out = self.vips.listed(event, self.spec)
                if out:
                    self.news(event.at)
            case VipAdded():
                out = self.vips.added(event)
                self.news(event.at)
            case IntentSubmitted():
                out = submitted(self, event)
            case Persisted():
                out = persisted(self, event)
            case ConfigSwapped():
                out = swapped(self, event)
            case RibRead():
                out = reread(self, event)
            case ChannelClosed():
                self.channel_up = False
                out = []
            case FleetModeChanged() | FleetViewChanged() | FleetCtlChanged() | GuardAnswered():
                out = fleet_event(self, event)
            case CanaryObserved():
                out = canary_observed(self, event)
            case _:
                assert_never(event)
        self._snap = None
        if self.fleet.enabled:
            out += self.fleet.publish(self.published())
        return out

    def next_deadline(self) -> float | None:
        """The monotonic time by which the shell should send the next Tick (None: no step is
        possible until another event arrives)."""
        if not self.synced or self.vips.waiting:
            return None
        if self._stale is None or self._stale:
            return self._news_at
        due = (self._next_sweep, self._timers, self.vips.next_retry())
        return min(t for t in (*due, self.rib.next_retry(self._last_decide)) if t is not None)

    def snapshot(self) -> Snapshot:
        """The PoP as status and metrics show it; built at most once per change."""
        if self._snap is None:
            self._snap = build_snapshot(self)
        return self._snap

    @property
    def last_progress(self) -> float:
        """Monotonic time of the last moment both probing and deciding were seen working."""
        has_targets = any(self.targets.values())
        return min(self._last_decide, self._last_probe) if has_targets else self._last_decide

    # -- probes and sessions -----------------------------------------------------------------

    def _observed(self, event: ProbeObserved) -> list[Command]:
        record = self._record(event.service, event.target)
        if record is None:  # the last result of a probe a reload removed
            return []
        now = event.at.mono
        before = (record.health.state, record.checker is None)
        if event.result.checker is not None:
            self.freeze(event.service)
        line = record.report(event.result, now)
        # A checker blind for longer than checker_fault_max is no progress: the watchdog then
        # fails the PoP closed, as for a hang (a blind agent must not hold routes for ever).
        if not record.blind_since(now, self.spec.checker_fault_max_s):
            self._last_probe = now
        if (record.health.state, record.checker is None) != before:
            self.news(event.at, event.service)
        if line is None:
            return []
        level = LogLevel.WARNING if record.checker is not None else LogLevel.INFO
        return [Log(level, f"target {event.service}/{event.target} {line}")]

    def _record(self, service: str, target: str) -> TargetRecord | None:
        return self._records.get((service, target))

    # -- the decision step -------------------------------------------------------------------

    def news(self, at: Instant, service: str | None = None) -> None:
        """Ask for a step now: for `service` only (its targets changed state), or for all."""
        if self._stale is not None and not self._stale:
            self._news_at = at.mono
        if service is None:
            self._stale = None
        elif self._stale is not None:
            self._stale.add(service)

    def _step(self, at: Instant) -> list[Command]:
        if self.next_deadline() is None:
            return []
        now = at.mono
        self._last_decide = now
        out: list[Command] = []
        only, self._stale = self._stale, set()
        if only is not None:
            only |= {
                s for s, o in self.outcomes.items() if o.wake_at is not None and o.wake_at <= now
            }
            if now >= self._next_sweep:
                only |= self._sweep_slice()
        if now >= self._next_sweep:  # a full step sweeps too
            self._next_sweep = now + TICK_S
        expired = self.intents.expire(at.wall)
        if expired is not self.intents:
            self.intents = expired
            self.drain_starts = drain_starts(self.drain_starts, expired, at)
            out += [
                info(f"operator intents expired; now: {expired.describe()}"),
                Persist(None, expired),
            ]
        wanted: dict[RouteKey, RouteAttrs | None] = {}
        causes: dict[str, str] = {}
        for svc in self.spec.services:
            outcome = self.outcomes.get(svc.name)
            if outcome is None or only is None or svc.name in only:
                outcome = self._evaluate(svc, at, out)
            wanted.update(outcome.wanted)
            cause = f"service {svc.name} {outcome.phase}: {outcome.reason}"
            for p in svc.prefixes:
                causes[str(p)] = cause
        for key in wanted:
            if key.prefix in self.vips.withheld:
                wanted[key] = None
                causes[key.prefix] = f"address of {key.prefix} missing on {self.spec.vip_interface}"
        spec = self.spec
        gone, orphans_wake = self.orphans.wanted(
            self.rib.held, now, spec.local_as, spec.drain_grace_s
        )
        for key in gone:
            causes.setdefault(key.prefix, f"{key.prefix} left the config: drained out")
        gone, asks, guard_wake = self.fleet.drain_out(
            gone, self.orphans.owner, self.rib.held, now, set(self.services)
        )
        out += asks
        wanted.update(gone)
        for command in self.rib.plan(wanted, self.mapped, now, causes):
            out += self._route(command, now)
        self.vips.expire(now)
        wakes = [o.wake_at for o in self.outcomes.values() if o.wake_at is not None]
        wakes += [w for w in (orphans_wake, guard_wake) if w is not None]
        self._timers = min(wakes, default=None)
        if not self.ready and all(o.phase is not Phase.UNKNOWN for o in self.outcomes.values()):
            self.ready = True
            out += [info("ready: every service decided"), Ready()]
        return out

    def _sweep_slice(self) -> set[str]:
        """The next TICK_S / SWEEP_S of the services, round robin."""
        names = [svc.name for svc in self.spec.services]
        if not names:
            return set()
        size = math.ceil(len(names) * TICK_S / SWEEP_S)
        start = self._sweep_at % len(names)
        self._sweep_at = start + size
        return set((names + names)[start : start + size])

    def _evaluate(self, svc: ServiceSpec, at: Instant, out: list[Command]) -> Outcome:
        """Decide one service from its targets, intents and memory."""
        records = self.targets[svc.name]
        faults = self._faults(svc.name)
        if faults:  # the checker is blind: health decides as it did when it went blind
            self.freeze(svc.name)
        else:
            self._frozen.pop(svc.name, None)
        live = None if faults else (decide(svc, [r.health for r in records]), *capacity(records))
        decision, lost, load = live or self._frozen[svc.name]
        held = svc.name in self.intents.ramp_holds
        mem = replace(self.memory.get(svc.name, Memory()), ramp_held=held)
        now, interval = at.mono, svc.policy.min_update_interval_s
        applied, pending = gate(
            self.applied.get(svc.name), svc.name, self.intents, self.drain_starts, now, interval
        )
        self.applied[svc.name] = applied
        mem, outcome = evaluate(
            svc,
            mem,
            decision,
            lost,
            load,
            applied.intents(),
            now,
            applied.drained_at,
            self.rib.held.keys(),
        )
        outcome = self.sessions.apply(svc, outcome, applied.intents(), self.rib.held.keys(), at)
        if pending is not None:
            wake = min(w for w in (pending, outcome.wake_at) if w is not None)
            why = (
                f"; operator change pending: applies in {pending - now:.1f}s (min_update_interval)"
            )
            outcome = replace(outcome, reason=outcome.reason + why, wake_at=wake)
        if faults:
            why = f"; health frozen: checker fault ({', '.join(faults)})"
            outcome = replace(outcome, reason=outcome.reason + why)
        if self.state_unreadable:
            why = f"state unreadable, held de-preferred until `state reset`: {decision.reason}"
            outcome = held_only(svc, outcome, self.rib.held.keys(), why)
        drain = applied.intents().drain_of(svc.name)
        override = drain is not None and drain.override_fleet
        recovering = any(r.health.state is TargetState.RECOVERING for r in records)
        outcome, asks = self.fleet.guard(svc, outcome, self.rib.held, now, override, recovering)
        out += asks
        self.memory[svc.name] = mem
        if held and outcome.phase in _RAMP_ENDED:
            self.intents = replace(self.intents, ramp_holds=self.intents.ramp_holds - {svc.name})
            out += [
                info(f"ramp hold of {svc.name} cleared: the service is {outcome.phase}"),
                Persist(None, self.intents),
            ]
        line = change_line(svc.name, self.outcomes.get(svc.name), outcome, records)
        if line is not None:
            out.append(info(line))
        self.outcomes[svc.name] = outcome
        self.healthy[svc.name] = decision.healthy
        return outcome

    @property
    def frozen(self) -> set[str]:
        """The services whose health a checker fault holds."""
        return set(self._frozen)

    def freeze(self, *services: str) -> None:
        """Keep what health says of these services now, until the checker sees again."""
        for name in services:
            if name not in self._frozen:
                records = self.targets[name]
                decision = decide(self.services[name], [r.health for r in records])
                self._frozen[name] = (decision, *capacity(records))

    def _faults(self, service: str) -> list[str]:
        """What blinds the checker for `service` now (empty: its health is live)."""
        faults = [f"{r.spec.name} {r.checker}" for r in self.targets[service] if r.checker]
        if self.canary is not None and not self.canary.ok:
            faults.append(f"canary: {self.canary.reason}")
        return faults

    def _route(self, command: RouteCommand, now: float) -> list[Command]:
        """The route command, or (`manage`) the VIP it needs first."""
        if isinstance(command, Announce):
            first = self.vips.before_announce(command.key.prefix, now)
            if first is not None:
                return first
        self.rib.in_flight.add(command.key)
        return [command]

    def published(self) -> dict[str, Announcing]:
        """Every service's state for the fleet, from what ExaBGP acknowledged."""
        return published_states(self)

    def keys_of(self, service: str) -> list[RouteKey]:
        """Every (neighbor, prefix) the config maps the service to."""
        return self._keys[service]

    def owners(self) -> dict[RouteKey, str]:
        """The service each (neighbor, prefix) of the config belongs to."""
        return {k: name for name, keys in self._keys.items() for k in keys}

    def allowed_prefixes(self) -> frozenset[str]:
        """The prefixes a command may name (DESIGN §4): configured, or held by ExaBGP."""
        return self._configured | {k.prefix for k in self.rib.held}

    def use(self, spec: PopSpec) -> None:
        self.spec = spec
        self._configured = frozenset(str(p) for s in spec.services for p in s.prefixes)
        self._records = {(s, r.spec.name): r for s, rs in self.targets.items() for r in rs}
        self.services = {s.name: s for s in spec.services}
        self._frozen = {k: v for k, v in self._frozen.items() if k in self.services}
        self.applied = {k: v for k, v in self.applied.items() if k in self.services}
        self._keys = route_keys(spec)
        self.mapped = {k for keys in self._keys.values() for k in keys}
        self.vips.mode = spec.addresses
        self.vips.withheld = self.vips.missing(spec)
