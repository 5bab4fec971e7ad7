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
from dataclasses import dataclass, replace
from typing import assert_never

from anycast_agent.core.commands import (
    Announce,
    Command,
    Persist,
    Ready,
    Refusal,
    RefusalKind,
    RemoveVip,
    Reply,
    RouteCommand,
    StartProbe,
    Withdraw,
    describe,
    error,
    info,
    warn,
)
from anycast_agent.core.events import (
    AckResult,
    ChannelClosed,
    CommandAcked,
    ConfigSwapped,
    Event,
    Instant,
    IntentSubmitted,
    NeighborChanged,
    OperatorRequest,
    Persisted,
    ProbeObserved,
    ProbeSkipped,
    RampRequest,
    Synced,
    Tick,
    UndrainRequest,
    VipAdded,
    VipsListed,
)
from anycast_agent.core.health import TargetRecord, capacity, carry_targets, observe
from anycast_agent.core.intents import POP, Drain, Intents
from anycast_agent.core.policy import decide
from anycast_agent.core.requests import applied, change
from anycast_agent.core.rib import Rib
from anycast_agent.core.snapshot import About, Snapshot, build_snapshot
from anycast_agent.core.spec import AddressMode, PopSpec, ServiceSpec
from anycast_agent.core.traffic import Memory, Outcome, Phase, adopt, change_line, evaluate
from anycast_agent.core.vips import VipGate
from anycast_agent.model import Family, NeighborState, RouteAttrs, RouteKey

# How long a route ExaBGP refused (or a VIP the kernel refused) waits before it is tried again.
REFUSED_RETRY_S = 30.0
# Each step re-evaluates, besides the services with news and those whose timer is due, a slice
# of the others, so every service is looked at again at least every SWEEP_S (load changes, the
# safety net) without one step evaluating them all (200 services stalled probes ~15 ms a step).
TICK_S = 0.25
SWEEP_S = 1.0
# Phases that end a ramp, and with it any operator hold on it.
_RAMP_ENDED = frozenset({Phase.DOWN, Phase.DRAINED, Phase.SUPPRESSED})
STATE_UNREADABLE = "state unreadable"


@dataclass(frozen=True, slots=True)
class _Pending:
    """An operator request whose intents are being written; it applies on `Persisted`."""

    ticket: int
    request: OperatorRequest
    intents: Intents


class Pop:
    def __init__(
        self,
        spec: PopSpec,
        about: About,
        started: Instant,
        intents: Intents | None = None,
        *,
        state_unreadable: bool = False,
    ) -> None:
        self.spec = spec
        self.about = about
        self.state_unreadable = state_unreadable
        if state_unreadable:
            drain = Drain(POP, STATE_UNREADABLE, "anycast-agent", since=started.wall)
            intents = Intents(drains={POP: drain})
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
        self._synced = False
        self._pending: _Pending | None = None
        self._stale: set[str] | None = None  # services with news; None: every service
        self._news_at = started.mono
        self._next_sweep = 0.0
        self._sweep_at = 0
        self._timers: float | None = None
        self._last_probe = self._last_decide = started.mono
        self.vips = VipGate(spec.addresses, spec.vip_interface)
        self._snap: Snapshot | None = None
        self._use(spec)

    # -- the surface -------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; the commands the shell must execute, in order."""
        match event:
            case ProbeObserved():
                return self._observed(event)
            case ProbeSkipped(service=service, target=target, slots=slots):
                record = self._record(service, target)
                if record is not None:
                    record.skipped += slots
                return [warn(f"target {service}/{target}: probe overran, {slots} slot(s) skipped")]
            case Tick(at=at):
                out = self._step(at)
            case Synced():
                out = self._sync(event)
            case CommandAcked():
                out = self._acked(event)
            case NeighborChanged(neighbor=peer, state=state, reason=reason):
                self.neighbors[peer] = state
                if state is NeighborState.ESTABLISHED:
                    self.rib.resend_neighbor(peer)
                    self._news(event.at)
                out = [info(f"neighbor {peer} {state}" + (f" ({reason})" if reason else ""))]
            case VipsListed():
                out = self.vips.listed(event, self.spec)
                if out:
                    self._news(event.at)
            case VipAdded():
                out = self.vips.added(event)
                self._news(event.at)
            case IntentSubmitted():
                out = self._submitted(event)
            case Persisted():
                out = self._persisted(event)
            case ConfigSwapped():
                out = self._swap(event)
            case ChannelClosed():
                self.channel_up = False
                out = []
            case _:
                assert_never(event)
        self._snap = None
        return out

    def next_deadline(self) -> float | None:
        """The monotonic time by which the shell should send the next Tick (None: no step is
        possible until another event arrives)."""
        if not self._synced or self.vips.waiting:
            return None
        if self._stale is None or self._stale:
            return self._news_at
        due = (
            self._next_sweep,
            self._timers,
            self.vips.next_retry(),
            self.rib.next_retry(self._last_decide),
        )
        return min(t for t in due if t is not None)

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
        self._last_probe = event.at.mono
        result = event.result
        before = record.health.state
        record.last = result
        if result.ok:
            record.ok += 1
        else:
            record.failed += 1
        spec = record.spec
        record.health = observe(record.health, result.ok, rise=spec.rise, fall=spec.fall)
        if record.health.state is before:
            return []
        record.transitions += 1
        self._news(event.at, event.service)
        why = f": {result.reason}" if result.reason else ""
        return [info(f"target {event.service}/{spec.name} {before} -> {record.health.state}{why}")]

    def _record(self, service: str, target: str) -> TargetRecord | None:
        return self._records.get((service, target))

    def _sync(self, event: Synced) -> list[Command]:
        self._synced = True
        self.neighbors = {n.address: NeighborState.DOWN for n in self.spec.neighbors}
        self.neighbors.update(event.neighbors)
        self.rib.held = dict(event.held)
        for svc in self.spec.services:
            self.memory[svc.name] = adopt(svc, event.held, event.at.mono)
        adopted = [s for s, m in self.memory.items() if m.was_up]
        sessions = ", ".join(f"{a} {s}" for a, s in sorted(self.neighbors.items()))
        fallback = " — RUNNING THE LAST-GOOD CONFIG" if self.about.last_good_fallback else ""
        self._news(event.at)
        return [
            info(
                f"start {self.about.starts}: ExaBGP holds {len(event.held)} routes (adopted: "
                f"{', '.join(adopted) or 'none'}); sessions: {sessions or 'none'}{fallback}"
            ),
            *(StartProbe(s.name, t) for s in self.spec.services for t in s.targets),
        ]

    def _acked(self, event: CommandAcked) -> list[Command]:
        command, now = event.command, event.at.mono
        self.acked[event.result] = self.acked.get(event.result, 0) + 1
        self.rib.in_flight.discard(command.key)
        match event.result:
            case AckResult.DONE:
                self.rib.accepted(command)
            case AckResult.ERROR:
                self.rib.refused(command, now + REFUSED_RETRY_S)
                return [error(f"ExaBGP refused {describe(command)}")]
            case AckResult.TIMEOUT:
                self.rib.unanswered(command, now + REFUSED_RETRY_S)
                return []
            case _:
                assert_never(event.result)
        prefix = command.key.prefix
        if (
            isinstance(command, Withdraw)
            and self.spec.addresses is AddressMode.MANAGE
            and self.spec.remove_vip_on_withdraw
            and not any(k.prefix == prefix for k in (*self.rib.held, *self.rib.in_flight))
        ):
            self.vips.up.discard(prefix)
            return [RemoveVip(prefix)]
        return []

    # -- the decision step -------------------------------------------------------------------

    def _news(self, at: Instant, service: str | None = None) -> None:
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
                self._next_sweep = now + TICK_S
                only |= self._sweep_slice()
        expired = self.intents.expire(at.wall)
        if expired is not self.intents:
            self.intents = expired
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
        for command in self.rib.plan(wanted, self._allowed, now, causes):
            out += self._route(command, now)
        self.vips.expire(now)
        self._timers = min(
            (o.wake_at for o in self.outcomes.values() if o.wake_at is not None), default=None
        )
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
        decision = decide(svc, [r.health for r in records])
        lost, load = capacity(records)
        held = svc.name in self.intents.ramp_holds
        mem = replace(self.memory.get(svc.name, Memory()), ramp_held=held)
        mem, outcome = evaluate(
            svc, mem, decision, lost, load, self.intents, at.mono, at.wall, self.rib.held.keys()
        )
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

    def _route(self, command: RouteCommand, now: float) -> list[Command]:
        """The route command, or (`manage`) the VIP it needs first."""
        if isinstance(command, Announce):
            first = self.vips.before_announce(command.key.prefix, now)
            if first is not None:
                return first
        self.rib.in_flight.add(command.key)
        return [command]

    # -- operator intents --------------------------------------------------------------------

    def _submitted(self, event: IntentSubmitted) -> list[Command]:
        if self._pending is not None:
            refusal = Refusal(RefusalKind.BUSY, "another operator change is being saved; retry")
            return [Reply(event.ticket, refusal)]
        changed = change(self.intents, event.request, event.at, self._services, self.memory)
        if isinstance(changed, Refusal):
            return [Reply(event.ticket, changed)]
        if changed == self.intents:  # nothing to write (a ramp advance, a repeated request)
            return self._accept(event.ticket, event.request, changed, event.at)
        self._pending = _Pending(event.ticket, event.request, changed)
        return [Persist(event.ticket, changed)]

    def _persisted(self, event: Persisted) -> list[Command]:
        pending = self._pending
        if event.ticket is None or pending is None or pending.ticket != event.ticket:
            if event.error:
                return [error(f"cannot persist operator intents: {event.error}")]
            return []
        self._pending = None
        if event.error:
            why = f"cannot persist the change ({event.error}): nothing changed"
            return [error(why), Reply(pending.ticket, Refusal(RefusalKind.NOT_PERSISTED, why))]
        return self._accept(pending.ticket, pending.request, pending.intents, event.at)

    def _accept(
        self, ticket: int, request: OperatorRequest, intents: Intents, at: Instant
    ) -> list[Command]:
        self.intents = intents
        if isinstance(request, UndrainRequest) and request.service is None:
            self.state_unreadable = False  # the operator has seen the PoP drained and lifts it
        if isinstance(request, RampRequest):
            line, self.memory[request.service] = applied(
                request, self.memory.get(request.service, Memory()), at
            )
        else:
            line, _ = applied(request, Memory(), at)
        self._news(at)
        return [info(line), Reply(ticket)]

    # -- reload ------------------------------------------------------------------------------

    def _swap(self, event: ConfigSwapped) -> list[Command]:
        """Apply a new config as a diff: unchanged targets keep their history and probe."""
        new = event.spec
        targets, probes = carry_targets(self.targets, new)
        out: list[Command] = list(probes) if self._synced else []  # Synced starts them all
        self.targets = targets
        names = {s.name for s in new.services}
        self.memory = {k: m for k, m in self.memory.items() if k in names}
        self.outcomes = {k: o for k, o in self.outcomes.items() if k in names}
        for svc in new.services:
            if self._synced and svc.name not in self.memory:
                # A new (or renamed) service whose routes ExaBGP holds continues from them.
                self.memory[svc.name] = adopt(svc, self.rib.held, event.at.mono)
        stale = sorted(
            k for k in (*self.intents.drains, *self.intents.meds) if k not in names | {POP}
        )
        if stale:
            out.append(warn(f"operator intents for services no longer configured: {stale}"))
        if new.vip_interface != self.spec.vip_interface:
            self.vips = VipGate(new.addresses, new.vip_interface)
        self.about = replace(self.about, last_good_fallback=False)
        self._use(new)
        self._news(event.at)
        return out

    def _use(self, spec: PopSpec) -> None:
        self.spec = spec
        self._records = {(s, r.spec.name): r for s, rs in self.targets.items() for r in rs}
        self._services = {s.name: s for s in spec.services}
        self._allowed = {
            RouteKey(n.address, str(p))
            for s in spec.services
            for n in s.neighbors
            for p in s.prefixes
            if Family.of(p) in n.families
        }
        self.vips.mode = spec.addresses
        self.vips.withheld = self.vips.missing(spec)
