"""Replicated intents and ramps (FLEET.md §3.7-§3.8), pure: what the fleet's `ctl/` keys ask
of this PoP. The shell hands the raw keys over; this module reads them and never trusts them.

Keys, relative to the fleet prefix, each a JSON object:
- `ctl/intent/pop/<pop>`, `ctl/intent/region/<region>`, `ctl/intent/service/<service>`:
  `{"action": "drain", "reason", "author", "created"}` or `{"action": "med", "med", ...}`.
- `ctl/ramp/service/<s>`, `ctl/ramp/region/<r>`, `ctl/ramp/region/<r>/service/<s>`:
  `{"percent", "salt", "members": [pop, ...], "author", "reason", "set_at"}`.

A PoP is in a ramp's active share when it is among the first ⌈percent·N/100⌉ of `members`
ordered by sha256(salt|pop): raising the percent only adds PoPs, and every agent computes the
same set offline. A PoP not listed is inactive. Outside the share, a service is drained.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, assert_never

from anycast_agent.core.coalesce import drain_starts
from anycast_agent.core.commands import Command, info, warn
from anycast_agent.core.events import (
    FleetCtlChanged,
    FleetModeChanged,
    FleetViewChanged,
    GuardAnswered,
    Instant,
)
from anycast_agent.core.intents import Drain, MedOverride

if TYPE_CHECKING:
    from anycast_agent.core.pop import Pop

MAX_MEMBERS = 10_000  # a ramp's member list longer than this is not a fleet's: ignored


@dataclass(frozen=True, slots=True)
class FleetDrain:
    scope: str  # the key it came from, e.g. "region/eu"
    reason: str
    author: str


@dataclass(frozen=True, slots=True)
class FleetMed:
    scope: str
    med: int
    reason: str
    author: str


@dataclass(frozen=True, slots=True)
class FleetIntents:
    """What the fleet asks of this PoP, per service; empty when nothing is set."""

    revision: int = 0  # the ctl/ revision these were read at (acknowledged in pops/<pop>)
    drains: Mapping[str, FleetDrain] = field(default_factory=dict)
    meds: Mapping[str, FleetMed] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # keys that were ignored, and why


def ramp_rank(salt: str, pops: Sequence[str]) -> list[str]:
    """`pops` in ramp order: by sha256 of `salt|pop`."""
    return sorted(pops, key=lambda p: hashlib.sha256(f"{salt}|{p}".encode()).hexdigest())


def ramp_share(members: Sequence[str], salt: str, percent: float) -> frozenset[str]:
    """The PoPs active at `percent`: exactly ⌈percent·N/100⌉ of the members."""
    count = math.ceil(max(0.0, min(100.0, percent)) * len(members) / 100 - 1e-9)
    return frozenset(ramp_rank(salt, list(dict.fromkeys(members)))[:count])


def fleet_intents(
    ctl: Mapping[str, bytes], revision: int, pop: str, region: str, services: Sequence[str]
) -> FleetIntents:
    """The drains and MEDs the `ctl/` keys (relative names, `intent/...` and `ramp/...`) put
    on each of `services` at this PoP. A service is drained if any intent or ramp drains it;
    of several MEDs, the highest (the most de-preferring) applies."""
    drains: dict[str, FleetDrain] = {}
    meds: dict[str, FleetMed] = {}
    problems: list[str] = []
    for key in sorted(ctl):
        parts = key.split("/")
        value = _object(ctl[key])
        if value is None:
            problems.append(f"ctl/{key}: not a JSON object: ignored")
            continue
        if parts[0] == "intent" and len(parts) == 3:
            applies = _scope_services(parts[1], parts[2], pop, region, services)
            if applies is None:
                problems.append(f"ctl/{key}: unknown scope {parts[1]!r}: ignored")
                continue
            why = _intent(key, value, applies, drains, meds)
        elif parts[0] == "ramp":
            why = _ramp(key, parts[1:], value, pop, region, services, drains)
        else:
            continue  # policy, budget, freeze, override: the guard reads those
        if why:
            problems.append(f"ctl/{key}: {why}: ignored")
    return FleetIntents(revision, drains, meds, tuple(problems))


def _object(raw: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _text(value: dict[str, object], field: str) -> str:
    text = value.get(field, "")
    return text[:200] if isinstance(text, str) and text.isprintable() else ""


def _scope_services(
    kind: str, name: str, pop: str, region: str, services: Sequence[str]
) -> list[str] | None:
    match kind:
        case "pop":
            return list(services) if name == pop else []
        case "region":
            return list(services) if name == region else []
        case "service":
            return [name] if name in services else []
        case _:
            return None


def _intent(
    key: str,
    value: dict[str, object],
    applies: list[str],
    drains: dict[str, FleetDrain],
    meds: dict[str, FleetMed],
) -> str:
    scope = key.removeprefix("intent/")
    reason, author = _text(value, "reason"), _text(value, "author")
    match value.get("action"):
        case "drain":
            for service in applies:
                drains.setdefault(service, FleetDrain(scope, reason, author))
        case "med":
            med = value.get("med")
            if not isinstance(med, int) or isinstance(med, bool) or not 0 <= med < 2**32 - 1:
                return f"med {med!r} is not 0..4294967294"
            for service in applies:
                if service not in meds or meds[service].med < med:
                    meds[service] = FleetMed(scope, med, reason, author)
        case other:
            return f"action {other!r} is not drain or med"
    return ""


def _ramp(
    key: str,
    scope: list[str],
    value: dict[str, object],
    pop: str,
    region: str,
    services: Sequence[str],
    drains: dict[str, FleetDrain],
) -> str:
    match scope:
        case ["service", name]:
            applies = [name] if name in services else []
        case ["region", name]:
            applies = list(services) if name == region else []
        case ["region", name, "service", svc]:
            applies = [svc] if name == region and svc in services else []
        case _:
            return "not ramp/service/S, ramp/region/R or ramp/region/R/service/S"
    percent, salt, members = value.get("percent"), value.get("salt"), value.get("members")
    if not isinstance(percent, int | float) or isinstance(percent, bool) or not 0 <= percent <= 100:
        return f"percent {percent!r} is not 0..100"
    if not isinstance(salt, str) or not isinstance(members, list) or len(members) > MAX_MEMBERS:
        return "salt must be a string and members a list of PoP names"
    if not all(isinstance(m, str) for m in members):
        return "members must be PoP names"
    if pop in ramp_share(members, salt, float(percent)):
        return ""
    why = f"outside the ramp's {percent:g}% share" if pop in members else "not a ramp member"
    for service in applies:
        drains.setdefault(service, FleetDrain(key, why, _text(value, "author")))
    return ""


def fleet_event(
    pop: Pop, event: FleetModeChanged | FleetViewChanged | FleetCtlChanged | GuardAnswered
) -> list[Command]:
    """What the fleet's coordinator reports: a mode, a change in the fleet's keys, a new
    ctl/ view, or the guard's answer."""
    match event:
        case FleetModeChanged(at=at, mode=mode, why=why):
            pop.news(at)
            return pop.fleet.mode_changed(mode, why)
        case FleetViewChanged(at=at):
            pop.fleet.view += 1
            pop.news(at)
            return []
        case FleetCtlChanged(at=at, ctl=ctl, revision=revision):
            pop.fleet_ctl = (ctl, revision)
            return apply_ctl(pop, at)
        case GuardAnswered(at=at, service=service, refused=refused, detail=detail):
            pop.news(at, service)
            return pop.fleet.answered(service, refused, detail, at.mono)
        case _:
            assert_never(event)


def apply_ctl(pop: Pop, at: Instant) -> list[Command]:
    """Make the fleet's layer of `pop.intents` what `pop.fleet_ctl` asks of this PoP now (a
    new ctl/ view, or a reload that changed the services)."""
    ctl, revision = pop.fleet_ctl
    names = [s.name for s in pop.spec.services]
    asked = fleet_intents(ctl, revision, pop.spec.pop, pop.spec.region, names)
    old = pop.intents
    drains = {
        name: old.fleet_drains.get(name)
        if _same(old.fleet_drains.get(name), d)
        else Drain(name, f"{d.reason} (fleet {d.scope})", d.author or "fleet", at.wall)
        for name, d in asked.drains.items()
    }
    meds = {
        name: MedOverride(name, m.med, f"{m.reason} (fleet {m.scope})", m.author, at.wall)
        for name, m in asked.meds.items()
    }
    out: list[Command] = [warn(p) for p in asked.problems if p not in pop.fleet_problems]
    pop.fleet_problems = asked.problems
    pop.fleet_revision = revision
    pop.fleet_drained_by = {
        name: "ramp" if d.scope.startswith("ramp/") else "intent"
        for name, d in asked.drains.items()
    }
    kept = {k: v for k, v in drains.items() if v is not None}
    if kept == old.fleet_drains and _meds(meds) == _meds(old.fleet_meds):
        return out
    pop.intents = replace(old, fleet_drains=kept, fleet_meds=meds)
    pop.drain_starts = drain_starts(pop.drain_starts, pop.intents, at)
    pop.news(at)
    what = [f"drain {s}" for s in sorted(kept)] + [
        f"med {s}={m.med}" for s, m in sorted(meds.items())
    ]
    return [*out, info(f"fleet intents at revision {revision}: {', '.join(what) or 'none'}")]


def _same(held: Drain | None, asked: FleetDrain) -> bool:
    return held is not None and held.reason == f"{asked.reason} (fleet {asked.scope})"


def _meds(meds: Mapping[str, MedOverride]) -> dict[str, tuple[int, str]]:
    return {k: (m.med, m.reason) for k, m in meds.items()}
