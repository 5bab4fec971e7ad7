"""An immutable picture of the agent for status and metrics, built once per decision step."""

from __future__ import annotations

from dataclasses import dataclass

from anycast_agent.core.intents import Drain, MedOverride
from anycast_agent.model import RouteAttrs, TargetState


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    name: str
    kind: str  # http | tcp | exec | dns
    state: TargetState
    last_ok: bool | None
    last_reason: str
    last_latency_s: float | None
    load: float | None
    probes_ok: int
    probes_failed: int
    skipped_slots: int
    transitions: int


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """One prefix towards one neighbor: what the agent wants and what ExaBGP accepted (`done`)."""

    prefix: str
    neighbor: str
    wanted: RouteAttrs | None  # None: withdrawn (or no opinion yet, see the service status)
    accepted: RouteAttrs | None  # what ExaBGP holds, as acknowledged


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    name: str
    status: str  # unknown | up | down
    reason: str
    healthy: int
    total: int
    quorum: int
    med: int | None  # the MED announced (None while withdrawn)
    stage: int  # ramp stage percent, 100 when fully announced, 0 when withdrawn
    ramp_mode: str
    ramp_held: bool
    suppressed: bool  # flap damping keeps it withdrawn
    penalty: float
    drain: Drain | None
    med_override: MedOverride | None
    transitions: int
    targets: tuple[TargetSnapshot, ...]
    routes: tuple[RouteSnapshot, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    pop: str
    version: str
    started_at: float  # wall clock
    ready: bool  # first full evaluation done with the ExaBGP channel up
    channel_up: bool
    neighbors: dict[str, str]  # address -> state (established, down, ...)
    commands_sent: int
    commands_acked: dict[str, int]  # done | error | timeout -> count
    starts: int  # agent starts counted in state_dir (respawns included)
    last_good_fallback: bool  # running the last-good config because the given one is invalid
    state_unreadable: bool
    last_progress: float  # monotonic time of the last probe-loop/decision progress
    services: tuple[ServiceSnapshot, ...]

    def service(self, name: str) -> ServiceSnapshot | None:
        return next((s for s in self.services if s.name == name), None)
