"""A reload as a diff: the PoP core takes a new config without losing what still applies."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from anycast_agent.core.commands import Command, warn
from anycast_agent.core.events import ConfigSwapped
from anycast_agent.core.health import carry_targets
from anycast_agent.core.intents import POP
from anycast_agent.core.traffic import adopt
from anycast_agent.core.vips import VipGate

if TYPE_CHECKING:
    from anycast_agent.core.pop import Pop


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
    pop.use(new)
    pop.news(event.at)
    return out
