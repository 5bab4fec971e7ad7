"""Held routes the config no longer maps (DESIGN §3.6, R31, R32): drained out, never dropped.

A route ExaBGP holds whose prefix (or neighbor) left the config is de-preferred (GSHUT, max
MED, the local AS four times) for `drain_grace`, then withdrawn. When more than half of what
ExaBGP holds would go at once, at start or on a reload (a truncated file, a wrong one, a
reload that drops every service), nothing is removed: the routes stay as held and an alert
says why, until an operator confirms with `anycast-agent reload --allow-withdraw`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anycast_agent.core.commands import Command, Log, LogLevel
from anycast_agent.core.traffic import DRAIN_PATH_LENGTH, sort_communities
from anycast_agent.model import GRACEFUL_SHUTDOWN, MED_DRAIN, RouteAttrs, RouteKey


@dataclass
class Orphans:
    since: dict[RouteKey, float] = field(default_factory=dict)  # when each was first seen
    held_back: bool = False  # more than half would go: nothing goes until allowed
    # The service each orphan belonged to, when known (a reload; at start, the last-good
    # config): with `fleet:`, its withdraw asks the guard under that service's name.
    owner: dict[RouteKey, str] = field(default_factory=dict)

    def review(
        self,
        held: Mapping[RouteKey, RouteAttrs],
        mapped: set[RouteKey],
        now: float,
        allow_withdraw: bool,
        owners: Mapping[RouteKey, str],
    ) -> list[Command]:
        """At start and after each reload: the orphans now, and whether they are held back;
        `owners` names the service each route belonged to before."""
        orphans = [k for k in held if k not in mapped]
        self.owner = {
            k: name for k in orphans if (name := owners.get(k) or self.owner.get(k)) is not None
        }
        was = self.held_back
        self.held_back = bool(orphans) and 2 * len(orphans) > len(held) and not allow_withdraw
        # The grace runs from when the drain-out may begin: time held back does not count.
        self.since = {k: now if was or self.held_back else self.since.get(k, now) for k in orphans}
        if self.held_back:
            return [
                Log(
                    LogLevel.CRITICAL,
                    f"{len(orphans)} of the {len(held)} routes ExaBGP holds are no longer in the "
                    "config: nothing is removed until `anycast-agent reload --allow-withdraw` "
                    "(a truncated or wrong config must not withdraw the PoP)",
                )
            ]
        if orphans:
            what = "; allowed by the operator" if was or allow_withdraw else ""
            return [Log(LogLevel.WARNING, f"draining out {len(orphans)} routes no longer in the "
                        f"config{what}")]  # fmt: skip
        return []

    def wanted(
        self, held: Mapping[RouteKey, RouteAttrs], now: float, local_as: int, grace_s: float
    ) -> tuple[dict[RouteKey, RouteAttrs | None], float | None]:
        """What each orphan should be now, and when to look again."""
        self.since = {k: t for k, t in self.since.items() if k in held}
        self.owner = {k: name for k, name in self.owner.items() if k in self.since}
        wanted: dict[RouteKey, RouteAttrs | None] = {}
        wakes = []
        for key, since in self.since.items():
            if self.held_back:
                wanted[key] = held[key]
            elif now - since < grace_s:
                wakes.append(since + grace_s)
                wanted[key] = RouteAttrs(
                    MED_DRAIN,
                    (local_as,) * DRAIN_PATH_LENGTH,
                    sort_communities((*held[key].communities, GRACEFUL_SHUTDOWN)),
                )
            else:
                wanted[key] = None
        return wanted, min(wakes, default=None)
