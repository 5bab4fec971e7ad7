"""The core's start and reloads: what it learns from ExaBGP when it starts, and a new config
taken as a diff, without losing what still applies; and ExaBGP's answers to route commands."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING, assert_never

from anycast_agent.core.commands import (
    Command,
    RemoveVip,
    StartProbe,
    Withdraw,
    describe,
    error,
    info,
    warn,
)
from anycast_agent.core.events import (
    AckResult,
    CanaryObserved,
    CommandAcked,
    ConfigSwapped,
    RibRead,
    Synced,
)
from anycast_agent.core.fleet_intents import apply_ctl
from anycast_agent.core.health import carry_targets
from anycast_agent.core.intents import POP, Intents
from anycast_agent.core.rib import REFUSED_RETRY_S
from anycast_agent.core.spec import AddressMode
from anycast_agent.core.traffic import adopt
from anycast_agent.core.vips import VipGate
from anycast_agent.model import NeighborState

if TYPE_CHECKING:
    from anycast_agent.core.pop import Pop


def synced(pop: Pop, event: Synced) -> list[Command]:
    """ExaBGP's truth at start: a service whose routes it holds continues from them (a
    respawn never restarts a ramp); held routes the config no longer maps are drained out."""
    pop.synced = True
    pop.neighbors = {n.address: NeighborState.DOWN for n in pop.spec.neighbors}
    pop.neighbors.update(event.neighbors)
    pop.rib.held = dict(event.held)
    held_back = pop.orphans.review(pop.rib.held, pop.mapped, event.at.mono, False, event.former)
    for svc in pop.spec.services:
        pop.memory[svc.name] = adopt(svc, event.held, event.at.mono)
    adopted = [s for s, m in pop.memory.items() if m.was_up]
    sessions = ", ".join(f"{a} {s}" for a, s in sorted(pop.neighbors.items()))
    fallback = " — RUNNING THE LAST-GOOD CONFIG" if pop.about.last_good_fallback else ""
    pop.news(event.at)
    return [
        info(
            f"start {pop.about.starts}: ExaBGP holds {len(event.held)} routes (adopted: "
            f"{', '.join(adopted) or 'none'}); sessions: {sessions or 'none'}{fallback}"
        ),
        *held_back,
        *(StartProbe(s.name, t) for s in pop.spec.services for t in s.targets),
    ]


def swapped(pop: Pop, event: ConfigSwapped) -> list[Command]:
    """Unchanged targets keep their history and probe; a new (or renamed) service whose
    routes ExaBGP holds continues from them; a dropped one's routes go on the next step."""
    new = event.spec
    targets, probes = carry_targets(pop.targets, new)
    out: list[Command] = list(probes) if pop.synced else []  # Synced starts them all
    pop.targets = targets
    names = {s.name for s in new.services}
    pop.memory = {k: m for k, m in pop.memory.items() if k in names}
    pop.outcomes = {k: o for k, o in pop.outcomes.items() if k in names}
    for svc in new.services:
        if pop.synced and svc.name not in pop.memory:
            pop.memory[svc.name] = adopt(svc, pop.rib.held, event.at.mono)
    stale = sorted(k for k in (*pop.intents.drains, *pop.intents.meds) if k not in names | {POP})
    if stale:
        out.append(warn(f"operator intents for services no longer configured: {stale}"))
    if new.vip_interface != pop.spec.vip_interface:
        pop.vips = VipGate(new.addresses, new.vip_interface)
    pop.about = replace(pop.about, last_good_fallback=False)
    owners = pop.owners()  # before the swap: the services the routes belonged to
    pop.use(new)
    if pop.fleet.enabled:
        out += apply_ctl(pop, event.at)
    if pop.synced:
        at, allow = event.at.mono, event.allow_withdraw
        out += pop.orphans.review(pop.rib.held, pop.mapped, at, allow, owners)
    pop.news(event.at)
    return out


def refusals(intents: Intents, services: Collection[str]) -> list[str]:
    """Why a reload to a config of these `services` must not apply (empty: it may): an
    operator's drain or MED override must not vanish with its service's name (a drained
    service renamed by a reload would be announced again)."""
    names = set(services)
    drains = [
        f"services[{k}]: drained by {d.author} ({d.reason})"
        for k, d in intents.drains.items()
        if k != POP and k not in names
    ]
    meds = [
        f"services[{k}]: MED {m.med} set by {m.author} ({m.reason})"
        for k, m in intents.meds.items()
        if k not in names
    ]
    return [
        f"{why}, and the new config has no such service: keep its name, or undrain/clear it first"
        for why in (*drains, *meds)
    ]


def reread(pop: Pop, event: RibRead) -> list[Command]:
    """ExaBGP's adj-rib-out read again: where it differs from what the acks said (ExaBGP
    reloaded its own config, R27), the RIB takes ExaBGP's word and the next step corrects it."""
    if not pop.synced:
        return []
    up = [n for n, state in pop.neighbors.items() if state is NeighborState.ESTABLISHED]
    fixed = pop.rib.reread(event.held, pop.mapped, up)
    if not fixed:
        return []
    pop.corrections += len(fixed)
    pop.news(event.at)
    shown = ", ".join(f"{k.prefix} to {k.neighbor}" for k in fixed[:3])
    more = f" and {len(fixed) - 3} more" if len(fixed) > 3 else ""
    return [
        warn(
            f"ExaBGP holds {len(fixed)} route(s) otherwise than it acknowledged ({shown}{more}): "
            "correcting"
        )
    ]


def canary_observed(pop: Pop, event: CanaryObserved) -> list[Command]:
    """The agent's own loopback canary: while it fails, every service's health is frozen."""
    result = event.result
    was_ok = pop.canary is None or pop.canary.ok
    pop.canary = result
    if not result.ok:
        pop.freeze(*pop.targets)
    if result.ok == was_ok:
        return []
    pop.news(event.at)
    if result.ok:
        return [info("canary answers again: probing works")]
    return [
        error(
            f"canary failed ({result.reason}): every service's health "
            "is frozen until the agent can probe its own loopback"
        )
    ]


def acked(pop: Pop, event: CommandAcked) -> list[Command]:
    """ExaBGP's answer to a route command: the RIB counts it only now (a refusal is retried
    later, an unanswered command too); a managed address leaves once no route needs it."""
    command, now = event.command, event.at.mono
    pop.acked[event.result] = pop.acked.get(event.result, 0) + 1
    pop.rib.in_flight.discard(command.key)
    match event.result:
        case AckResult.DONE:
            pop.rib.accepted(command)
        case AckResult.ERROR:
            retry_at = pop.rib.refused(command, now)
            again = "" if retry_at is None else f"; tried again in {retry_at - now:.0f}s"
            return [error(f"ExaBGP refused {describe(command)}{again}")]
        case AckResult.TIMEOUT:
            pop.rib.unanswered(command, now + REFUSED_RETRY_S)
            return []
        case _:
            assert_never(event.result)
    prefix = command.key.prefix
    if (
        isinstance(command, Withdraw)
        and pop.spec.addresses is AddressMode.MANAGE
        and pop.spec.remove_vip_on_withdraw
        and not any(k.prefix == prefix for k in (*pop.rib.held, *pop.rib.in_flight))
    ):
        pop.vips.up.discard(prefix)
        return [RemoveVip(prefix)]
    return []
