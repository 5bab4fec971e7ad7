"""Service decisions: from target health to UP/DOWN, MED and the routes wanted per neighbor."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from anycast_agent.core.health import Health
from anycast_agent.core.spec import ServiceSpec


class ServiceStatus(enum.StrEnum):
    UNKNOWN = "unknown"  # not enough targets decided yet: the agent has no opinion
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Decision:
    status: ServiceStatus
    healthy: int
    decided: int
    total: int
    quorum: int
    reason: str


def decide(service: ServiceSpec, healths: Sequence[Health]) -> Decision:
    """UP once the quorum is certainly met, DOWN once it certainly cannot be, else UNKNOWN."""
    total = len(healths)
    healthy = sum(h.counts_healthy for h in healths)
    decided = sum(h.decided for h in healths)
    quorum = service.quorum
    undecided = total - decided
    counts = f"{healthy}/{total} targets healthy, quorum {quorum}"
    if healthy >= quorum:
        return Decision(ServiceStatus.UP, healthy, decided, total, quorum, counts)
    if healthy + undecided < quorum:
        return Decision(ServiceStatus.DOWN, healthy, decided, total, quorum, counts)
    return Decision(
        ServiceStatus.UNKNOWN,
        healthy,
        decided,
        total,
        quorum,
        f"{counts}, {undecided} undecided",
    )
