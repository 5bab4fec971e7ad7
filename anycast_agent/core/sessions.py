"""Per-session drains (issue 19): one transit or IXP session drained for maintenance while the
others keep the PoP's routes.

A drained session's routes of a service go through the same sequence as a drain: GSHUT, max
MED and a long AS path for `drain_grace`, then a withdraw, on that session only. Undrained, the
session comes back through a prepend ramp (the service's stages, AS path halving at each): the
neighbors ramp mode means nothing for one session.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from anycast_agent.core.events import Instant
from anycast_agent.core.intents import POP, Intents
from anycast_agent.core.spec import ServiceSpec
from anycast_agent.core.traffic import Outcome, drained_attrs, extra_prepends, sort_communities
from anycast_agent.model import GRACEFUL_SHUTDOWN, RouteAttrs, RouteKey


class Sessions:
    """When each session drain began and when each drained session came back (monotonic)."""

    def __init__(self) -> None:
        self.starts: dict[tuple[str, str, str], float] = {}  # (service, scope, neighbor)
        self.back: dict[tuple[str, str], float] = {}  # (service, neighbor): ramping back since
        self.drained: dict[str, frozenset[str]] = {}  # service: its drained sessions

    def apply(
        self,
        svc: ServiceSpec,
        outcome: Outcome,
        intents: Intents,
        held: Collection[RouteKey],
        at: Instant,
    ) -> Outcome:
        """`outcome` with the service's drained sessions de-preferred or withdrawn, and the
        sessions coming back ramped."""
        now = at.mono
        # A session drain's grace runs from when it reaches this service's routes (the
        # min_update_interval gate may hold it back); one read from disk at start keeps the
        # grace it already ran.
        first = svc.name not in self.drained
        mine = {(svc.name, *k): d for k, d in intents.sessions.items()}
        self.starts = {k: t for k, t in self.starts.items() if k[0] != svc.name or k in mine}
        for k, d in mine.items():
            self.starts.setdefault(k, now - max(0.0, at.wall - d.since) if first else now)
        addresses = [str(n.address) for n in svc.neighbors]
        drained = frozenset(a for a in addresses if intents.session_drain_of(svc.name, a))
        for neighbor in self.drained.get(svc.name, frozenset()) - drained:
            self.back[svc.name, neighbor] = now
        self.drained[svc.name] = drained
        if not drained and not any(name == svc.name for name, _ in self.back):
            return outcome
        wanted = dict(outcome.wanted)
        wakes = [] if outcome.wake_at is None else [outcome.wake_at]
        for key, attrs in outcome.wanted.items():
            if attrs is None:
                continue
            if key.neighbor in drained:
                wanted[key], wake = self._drained(svc, intents, key, held, now)
            else:
                wanted[key], wake = self._coming_back(svc, key, attrs, now)
            if wake is not None:
                wakes.append(wake)
        why = "".join(f"; session to {a} drained" for a in sorted(drained))
        return replace(
            outcome,
            wanted=wanted,
            reason=outcome.reason + why,
            wake_at=min(wakes, default=None),
        )

    def _drained(
        self,
        svc: ServiceSpec,
        intents: Intents,
        key: RouteKey,
        held: Collection[RouteKey],
        now: float,
    ) -> tuple[RouteAttrs | None, float | None]:
        drain = intents.session_drain_of(svc.name, key.neighbor)
        assert drain is not None
        ends = self.starts[svc.name, drain.scope, key.neighbor] + svc.policy.drain_grace_s
        if now >= ends:
            return None, None
        # Only what the session holds is de-preferred: a drain never announces anything new.
        return (drained_attrs(svc) if key in held else None), ends

    def _coming_back(
        self, svc: ServiceSpec, key: RouteKey, attrs: RouteAttrs, now: float
    ) -> tuple[RouteAttrs, float | None]:
        since = self.back.get((svc.name, key.neighbor))
        if since is None:
            return attrs, None
        policy = svc.policy
        stages = policy.stages
        hold = policy.stage_hold_s
        index = len(stages) - 1 if hold <= 0 else min(int((now - since) // hold), len(stages) - 1)
        extra = extra_prepends(index, stages)
        if extra == 0:
            del self.back[svc.name, key.neighbor]
            return attrs, None
        path = attrs.as_path or (policy.local_as,)
        ramped = RouteAttrs(
            med=attrs.med,
            as_path=path + (policy.local_as,) * extra,
            communities=sort_communities((*attrs.communities, GRACEFUL_SHUTDOWN)),
        )
        return ramped, since + (index + 1) * hold


def session_drains(intents: Intents, service: str) -> Mapping[str, str]:
    """The drained sessions of `service`: neighbor → why."""
    return {
        neighbor: f"{d.reason} ({d.author})"
        for (scope, neighbor), d in intents.sessions.items()
        if scope in (service, POP)
    }
