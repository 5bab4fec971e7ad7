"""Operator intents as one service's routes see them: at most one change per
`min_update_interval`, the latest request winning (issue 14, R35).

A storm of valid, authenticated drain/undrain or MED calls must not flap the PoP's routes: the
rate limit bounds how many calls are accepted, and this gate bounds how often what they ask for
reaches the routes. The first change after a quiet interval applies at once; the ones that
follow within the interval are recorded (persisted, answered 200) and the last of them applies
when the interval has passed. Health never waits here: only operator intents are gated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from anycast_agent.core.events import Instant
from anycast_agent.core.intents import POP, STOP, Drain, Intents, MedOverride, SessionDrain


@dataclass(frozen=True, slots=True)
class Applied:
    """The intents one service's routes follow now, and since when (monotonic)."""

    drain: Drain | None
    med: MedOverride | None
    since: float
    drained_at: float  # monotonic start of the applied drain's grace (when there is one)
    sessions: Mapping[tuple[str, str], SessionDrain] = field(default_factory=dict)

    @property
    def effect(self) -> tuple[bool, int | None, frozenset[str]]:
        """What the routes depend on: drained (then a MED override means nothing), or the MED
        override; and which sessions are drained."""
        sessions = frozenset(neighbor for _, neighbor in self.sessions)
        if self.drain is not None:
            return True, None, sessions
        return False, None if self.med is None else self.med.med, sessions

    def intents(self) -> Intents:
        """These intents alone, for the decision step of their service."""
        drains = {} if self.drain is None else {self.drain.service: self.drain}
        meds = {} if self.med is None else {self.med.service: self.med}
        return Intents(drains=drains, meds=meds, sessions=dict(self.sessions))


def fleet_key(service: str) -> str:
    """The key of the fleet's drain of `service` among drain starts."""
    return f"*fleet/{service}"


def drain_starts(known: Mapping[str, float], intents: Intents, at: Instant) -> dict[str, float]:
    """When, on the monotonic clock, each drain began: now for a new one, `since` ago (never
    in the future) for one read from disk; one already `known` keeps its start."""
    drains = {**intents.drains, **({STOP: intents.stopping} if intents.stopping else {})}
    drains.update({fleet_key(s): d for s, d in intents.fleet_drains.items()})
    return {k: known.get(k, at.mono - max(0.0, at.wall - d.since)) for k, d in drains.items()}


def gate(
    applied: Applied | None,
    service: str,
    intents: Intents,
    starts: Mapping[str, float],
    now: float,
    interval: float,
) -> tuple[Applied, float | None]:
    """The intents `service`'s routes follow at `now`, and when to look again (None: nothing
    waits). `starts` are the drains' starts (`drain_starts`); `applied` is None on the first
    step (a start, a new service), which takes the intents as they are."""
    drain = intents.drain_of(service)
    # The drain for a stop never waits: the unit's stop timeout is counted from it.
    urgent = drain is not None and drain is intents.stopping
    if drain is not None and drain.service in (POP, STOP):
        drain = replace(drain, service=service)  # so that drain_of(service) finds it
    med = intents.med_of(service)
    sessions = {k: d for k, d in intents.sessions.items() if k[0] in (service, POP)}
    # The grace runs from the earliest drain that applies (a service drain added during a PoP
    # drain does not start it over).
    keys = (service, POP, STOP, fleet_key(service))
    started = min((starts[k] for k in keys if k in starts), default=now)
    if applied is None:
        return Applied(drain, med, float("-inf"), started, sessions), None
    wanted = Applied(drain, med, applied.since, applied.drained_at, sessions)
    if wanted.effect == applied.effect:  # a new reason or author: no route changes
        return wanted, None
    ready = applied.since + interval
    if now < ready and not urgent:
        return applied, ready
    # A drain held back here starts its grace when it applies (the grace is the time routes
    # are de-preferred before the withdraw); one that goes on (a MED change while drained)
    # keeps its start.
    still = applied.drain is not None and drain is not None
    drained_at = applied.drained_at if still else min(now, max(started, ready))
    return Applied(drain, med, now, drained_at, sessions), None
