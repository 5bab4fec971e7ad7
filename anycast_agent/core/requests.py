"""Operator requests judged against the current intents: the new intents, or a typed refusal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, assert_never

from anycast_agent.core.coalesce import drain_starts
from anycast_agent.core.commands import (
    Command,
    Persist,
    Refusal,
    RefusalKind,
    Reply,
    error,
    info,
)
from anycast_agent.core.events import (
    ClearMedRequest,
    DrainRequest,
    Instant,
    IntentSubmitted,
    OperatorRequest,
    Persisted,
    RampRequest,
    SetMedRequest,
    StateResetRequest,
    UndrainRequest,
)
from anycast_agent.core.intents import (
    MAX_EXPIRY_S,
    POP,
    STOP,
    Drain,
    Intents,
    MedOverride,
    RampAction,
    SessionDrain,
)
from anycast_agent.core.spec import ServiceSpec
from anycast_agent.core.traffic import Memory

if TYPE_CHECKING:
    from anycast_agent.core.pop import Pop


def change(
    intents: Intents,
    request: OperatorRequest,
    at: Instant,
    services: Mapping[str, ServiceSpec],
    memory: Mapping[str, Memory],
    unreadable: str = "",
) -> Intents | Refusal:
    """The intents after `request` (the same object's equal when nothing is to be written),
    or why it cannot apply."""
    i = intents
    if isinstance(request, StateResetRequest):
        if not unreadable:
            return Refusal(RefusalKind.CONFLICT, "the state file reads fine: nothing to reset")
        return Intents(fleet_drains=i.fleet_drains, fleet_meds=i.fleet_meds)
    if unreadable:
        return Refusal(
            RefusalKind.CONFLICT,
            f"state unreadable ({unreadable}): nothing changes until "
            "`anycast-agent state reset --reason ...` (what ExaBGP holds stays de-preferred)",
        )
    key = POP if request.service is None else request.service
    if key != POP and key not in services:
        return Refusal(RefusalKind.UNKNOWN_SERVICE, f"no service named {key!r} is configured")
    what = "the PoP" if key == POP else repr(key)
    expires = getattr(request, "expires_in_s", None)
    until = None if expires is None else at.wall + min(expires, MAX_EXPIRY_S)
    neighbor = getattr(request, "neighbor", None)
    if (
        isinstance(request, DrainRequest)
        and request.override_fleet
        and (neighbor or request.on_stop)
    ):
        return Refusal(
            RefusalKind.CONFLICT, "--override-fleet is for a drain of a service or the PoP"
        )
    if neighbor is not None:
        return _session_change(i, request, key, neighbor, at, until, services)
    match request:
        case DrainRequest(on_stop=True) if key != POP:
            return Refusal(RefusalKind.CONFLICT, "a drain for the stop covers the whole PoP")
        case DrainRequest(reason=reason, author=author, on_stop=True):
            if i.stopping is not None:
                return i
            return replace(i, stopping=Drain(STOP, reason, author, at.wall))
        case DrainRequest(reason=reason, author=author, override_fleet=override):
            existing = i.drains.get(key)
            since = (
                existing.since if existing is not None else at.wall
            )  # a re-drain keeps its grace
            drain = Drain(key, reason, author, since, until, override)
            return replace(i, drains={**i.drains, key: drain})
        case UndrainRequest():
            fleet = i.fleet_drains.get(key)
            if key not in i.drains and fleet is not None:
                return Refusal(
                    RefusalKind.CONFLICT,
                    f"{what} is drained by the fleet ({fleet.reason}), not here: "
                    "`anycast-agent fleet undrain` ends that drain",
                )
            if key not in i.drains:
                return Refusal(RefusalKind.CONFLICT, f"{what} is not drained")
            return replace(i, drains={k: d for k, d in i.drains.items() if k != key})
        case SetMedRequest(med=med, reason=reason, author=author):
            return replace(
                i, meds={**i.meds, key: MedOverride(key, med, reason, author, at.wall, until)}
            )
        case ClearMedRequest():
            if key not in i.meds:
                return Refusal(RefusalKind.CONFLICT, f"service {key!r} has no MED override")
            return replace(i, meds={k: m for k, m in i.meds.items() if k != key})
        case StateResetRequest():  # pragma: no cover - answered above
            return Intents(fleet_drains=i.fleet_drains, fleet_meds=i.fleet_meds)
        case RampRequest(action=action):
            mem = memory.get(key, Memory())
            last = len(services[key].policy.stages) - 1
            match action:
                case RampAction.HOLD:
                    return replace(i, ramp_holds=i.ramp_holds | {key})
                case RampAction.RESUME:
                    return replace(i, ramp_holds=i.ramp_holds - {key})
                case RampAction.ADVANCE if not mem.was_up or mem.stage >= last:
                    return Refusal(RefusalKind.CONFLICT, f"service {key!r} is not ramping")
                case RampAction.RESTART if not mem.was_up:
                    return Refusal(RefusalKind.CONFLICT, f"service {key!r} is not announced")
                case RampAction.ADVANCE | RampAction.RESTART:
                    return i  # the stage lives in memory, not in the persisted intents
                case _:
                    assert_never(action)
        case _:
            assert_never(request)


def _session_change(
    i: Intents,
    request: OperatorRequest,
    key: str,
    neighbor: str,
    at: Instant,
    until: float | None,
    services: Mapping[str, ServiceSpec],
) -> Intents | Refusal:
    """A drain or undrain of one BGP session (issue 19)."""
    scope = services.values() if key == POP else [services[key]]
    if not any(str(n.address) == neighbor for s in scope for n in s.neighbors):
        what = "no service" if key == POP else f"service {key!r}"
        return Refusal(RefusalKind.CONFLICT, f"{what} announces to neighbor {neighbor!r}")
    slot = (key, neighbor)
    match request:
        case DrainRequest(on_stop=True):
            return Refusal(RefusalKind.CONFLICT, "a drain for the stop covers every session")
        case DrainRequest(reason=reason, author=author):
            existing = i.sessions.get(slot)
            since = existing.since if existing is not None else at.wall
            drain = SessionDrain(key, neighbor, reason, author, since, until)
            return replace(i, sessions={**i.sessions, slot: drain})
        case UndrainRequest():
            if slot not in i.sessions:
                return Refusal(RefusalKind.CONFLICT, f"the session to {neighbor} is not drained")
            return replace(i, sessions={k: d for k, d in i.sessions.items() if k != slot})
    raise AssertionError(f"not a session request: {request!r}")  # pragma: no cover


def applied(request: OperatorRequest, mem: Memory, at: Instant) -> tuple[str, Memory]:
    """The log line of an accepted request, and the service's memory after it (a ramp advance
    or restart moves the stage; everything else lives in the intents)."""
    scope = "PoP" if request.service is None else request.service
    match request:
        case DrainRequest(reason=reason, author=author, on_stop=on_stop, neighbor=neighbor):
            tail = " (for the stop: not persisted)" if on_stop else ""
            if request.override_fleet:
                tail += " (OVERRIDING THE FLEET GUARD: withdraws without etcd's permit)"
            to = f" to {neighbor}" if neighbor else ""
            return f"drain {scope}{to} by {author}: {reason}{tail}", mem
        case UndrainRequest(author=author, neighbor=neighbor):
            to = f" to {neighbor}" if neighbor else ""
            return f"undrain {scope}{to} by {author}", mem
        case SetMedRequest(med=med, reason=reason, author=author):
            return f"MED override {scope}={med} by {author}: {reason}", mem
        case ClearMedRequest(author=author):
            return f"MED override of {scope} cleared by {author}", mem
        case StateResetRequest(reason=reason, author=author):
            return f"state reset by {author}: {reason} (no intents; services ramp back)", mem
        case RampRequest(service=name, action=action, author=author):
            line = f"ramp {name} {action} by {author}"
            if action is RampAction.ADVANCE:
                return line, replace(mem, stage=mem.stage + 1, stage_since=at.mono)
            if action is RampAction.RESTART:
                return line, replace(mem, stage=0, stage_since=at.mono)
            return line, mem
        case _:
            assert_never(request)


_STAGE_MOVES = frozenset({RampAction.ADVANCE, RampAction.RESTART})


def _too_soon(pop: Pop, request: OperatorRequest, at: Instant) -> Refusal | None:
    """A ramp advance or restart moves routes at once; like any operator change it may do so
    once per min_update_interval (R35). Drains and MED overrides are accepted and applied
    later instead (core/coalesce.py): an advance that waited could land at a worse time."""
    if not isinstance(request, RampRequest) or request.action not in _STAGE_MOVES:
        return None
    applied, service = pop.applied.get(request.service), pop.services.get(request.service)
    if applied is None or service is None:
        return None
    ready = applied.since + service.policy.min_update_interval_s
    if at.mono >= ready:
        return None
    why = f"the routes of {request.service!r} changed by hand {at.mono - applied.since:.0f}s ago"
    return Refusal(
        RefusalKind.CONFLICT,
        f"{why}; try again in {ready - at.mono:.0f}s (min_update_interval)",
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """An operator request whose intents are being written; it applies on `Persisted`."""

    ticket: int
    request: OperatorRequest
    intents: Intents


def submitted(pop: Pop, event: IntentSubmitted) -> list[Command]:
    """Judge a request: refuse it, apply it (nothing to write), or write its intents first."""
    if pop.pending is not None:
        refusal = Refusal(RefusalKind.BUSY, "another operator change is being saved; retry")
        return [Reply(event.ticket, refusal)]
    too_soon = _too_soon(pop, event.request, event.at)
    if too_soon is not None:
        return [Reply(event.ticket, too_soon)]
    changed = change(
        pop.intents, event.request, event.at, pop.services, pop.memory, pop.state_unreadable
    )
    if isinstance(changed, Refusal):
        return [Reply(event.ticket, changed)]
    unwritten = isinstance(event.request, DrainRequest) and event.request.on_stop
    if changed == pop.intents or unwritten:  # a ramp advance, a repeat, a drain for a stop
        return _accept(pop, event.ticket, event.request, changed, event.at)
    pop.pending = Pending(event.ticket, event.request, changed)
    return [Persist(event.ticket, changed)]


def persisted(pop: Pop, event: Persisted) -> list[Command]:
    """A write's answer: the pending request applies, or is refused and changes nothing."""
    pending = pop.pending
    pop.write_errors += bool(event.error)
    if event.ticket is None or pending is None or pending.ticket != event.ticket:
        if event.error:
            return [error(f"cannot persist operator intents: {event.error}")]
        return []
    pop.pending = None
    if event.error:
        why = f"cannot persist the change ({event.error}): nothing changed"
        return [error(why), Reply(pending.ticket, Refusal(RefusalKind.NOT_PERSISTED, why))]
    return _accept(pop, pending.ticket, pending.request, pending.intents, event.at)


def _accept(
    pop: Pop, ticket: int, request: OperatorRequest, intents: Intents, at: Instant
) -> list[Command]:
    pop.intents = intents
    pop.drain_starts = drain_starts(pop.drain_starts, intents, at)
    if isinstance(request, StateResetRequest):
        pop.state_unreadable = ""
        # What ExaBGP holds was de-preferred: coming back is a re-announce, so it ramps.
        pop.memory = {k: replace(m, was_up=False) for k, m in pop.memory.items()}
    line, mem = applied(request, pop.memory.get(request.service or "", Memory()), at)
    if isinstance(request, RampRequest):
        pop.memory[request.service] = mem
        if request.action in _STAGE_MOVES and request.service in pop.applied:
            # A stage moved by hand is an operator change of the routes like the others.
            gate = pop.applied[request.service]
            pop.applied[request.service] = replace(gate, since=at.mono)
    pop.news(at)
    return [info(line), Reply(ticket)]
