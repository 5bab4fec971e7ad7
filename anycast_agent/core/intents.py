"""Operator intents (drain, MED override, ramp control): values the agent persists and obeys."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

POP = "*"  # the key of a PoP-wide drain
STOP = "*stop"  # the key of the drain for a stop (`Intents.stopping`) among drain starts
# The furthest an operator's expiry may lie ahead: it is a wall-clock time (it outlives the
# process), and a clock stepped far ahead must not make an intent last for years.
MAX_EXPIRY_S = 30 * 86400.0


class RampAction(enum.StrEnum):
    HOLD = "hold"
    RESUME = "resume"
    ADVANCE = "advance"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Drain:
    """Drain one service (or the whole PoP when `service` is POP): de-prefer, then withdraw."""

    service: str
    reason: str
    author: str
    since: float  # wall-clock seconds (persisted; survives restarts)
    expires: float | None = None
    # Break-glass (`drain --override-fleet`): the withdraw after the grace needs no permit
    # from the fleet guard, for a PoP black-holing traffic while etcd is unreachable.
    override_fleet: bool = False


@dataclass(frozen=True, slots=True)
class SessionDrain:
    """Drain one BGP session (`neighbor`) of one service, or of every service (`scope` POP):
    that session's routes are de-preferred, then withdrawn; the other sessions keep theirs."""

    scope: str
    neighbor: str
    reason: str
    author: str
    since: float  # wall-clock seconds
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class MedOverride:
    service: str
    med: int
    reason: str
    author: str
    since: float
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Intents:
    """Everything an operator asked for; immutable, replaced as a whole on each change."""

    drains: dict[str, Drain] = field(default_factory=dict)
    meds: dict[str, MedOverride] = field(default_factory=dict)
    ramp_holds: frozenset[str] = frozenset()
    # The unit's ExecStop drains the PoP for the stop: a layer of its own, never persisted,
    # never expiring, and never taking the place of an operator's drain.
    stopping: Drain | None = None
    sessions: dict[tuple[str, str], SessionDrain] = field(default_factory=dict)  # (scope, nbr)
    # The fleet's layer (ctl/ in etcd, FLEET.md §3.8), per service: never written to the
    # state file (the agent keeps its own copy of ctl/), and never undone by a local undrain.
    fleet_drains: dict[str, Drain] = field(default_factory=dict)
    fleet_meds: dict[str, MedOverride] = field(default_factory=dict)

    def session_drain_of(self, service: str, neighbor: str) -> SessionDrain | None:
        """The drain of `service`'s session to `neighbor`: its own, else the PoP-wide one."""
        return self.sessions.get((service, neighbor)) or self.sessions.get((POP, neighbor))

    def drain_of(self, service: str) -> Drain | None:
        """The drain that applies to `service`: its own, else the PoP-wide one, else the
        drain for the stop, else the fleet's."""
        return (
            self.drains.get(service)
            or self.drains.get(POP)
            or self.stopping
            or self.fleet_drains.get(service)
        )

    def med_of(self, service: str) -> MedOverride | None:
        """The MED override of `service`: the PoP's own, else the fleet's."""
        return self.meds.get(service) or self.fleet_meds.get(service)

    def local(self) -> Intents:
        """These intents without the fleet's layer."""
        return replace(self, fleet_drains={}, fleet_meds={})

    def expire(self, wall_now: float) -> Intents:
        """These intents without the ones whose expiry has passed."""
        drains = {k: d for k, d in self.drains.items() if d.expires is None or d.expires > wall_now}
        meds = {k: m for k, m in self.meds.items() if m.expires is None or m.expires > wall_now}
        sessions = {
            k: d for k, d in self.sessions.items() if d.expires is None or d.expires > wall_now
        }
        if (len(drains), len(meds), len(sessions)) == (
            len(self.drains),
            len(self.meds),
            len(self.sessions),
        ):
            return self
        return replace(self, drains=drains, meds=meds, sessions=sessions)

    def describe(self) -> str:
        parts = [f"drain {k}" for k in self.drains] + [f"med {k}" for k in self.meds]
        parts += ["drain for the stop"] if self.stopping else []
        parts += [f"drain {scope} to {neighbor}" for scope, neighbor in self.sessions]
        return ", ".join(parts) or "none"
