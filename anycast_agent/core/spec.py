"""The config as the core reads it: plain frozen values, built once by config.py (`spec()`)."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

from anycast_agent.model import Family, Prefix, RouteKey


class OnDown(enum.StrEnum):
    WITHDRAW = "withdraw"
    DEPREFER = "deprefer"


class RampMode(enum.StrEnum):
    AUTO = "auto"  # resolved by config.py; the core only ever sees the three below
    NEIGHBORS = "neighbors"
    PREFIXES = "prefixes"
    PREPEND = "prepend"


class AddressMode(enum.StrEnum):
    OFF = "off"
    CHECK = "check"
    MANAGE = "manage"


class TargetKind(enum.StrEnum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"
    DNS = "dns"


@dataclass(frozen=True, slots=True)
class DampingPolicy:
    """RFC 2439-style flap damping of a service's UP/DOWN changes."""

    enabled: bool = True
    penalty: float = 1000.0
    half_life: float = 60.0
    suppress: float = 3000.0
    reuse: float = 750.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Resolved traffic-engineering settings of one service (DESIGN §3.3-§3.5)."""

    local_as: int
    med_hold_s: float
    min_update_interval_s: float
    capacity_penalty: int
    load_tiers: tuple[tuple[float, int], ...]
    drain_grace_s: float
    damping: DampingPolicy
    stages: tuple[int, ...]
    stage_hold_s: float
    ramp_mode: RampMode


@dataclass(frozen=True, slots=True)
class NeighborSpec:
    address: str  # canonical text form, as in RouteKey
    families: tuple[Family, ...]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One target. `check` is the probe's own config, opaque here: two specs are the same
    check when they are equal, which is how a reload decides to keep a target's history."""

    name: str
    kind: TargetKind
    rise: int
    fall: int
    interval_s: float
    timeout_s: float
    check: Hashable = field(compare=True)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    prefixes: tuple[Prefix, ...]
    med: int
    med_down: int
    communities: tuple[str, ...]
    on_down: OnDown
    quorum: int  # healthy targets needed to be UP
    neighbors: tuple[NeighborSpec, ...]  # the neighbors the service is announced to
    targets: tuple[TargetSpec, ...]
    policy: Policy


@dataclass(frozen=True, slots=True)
class PopSpec:
    pop: str
    services: tuple[ServiceSpec, ...]
    neighbors: tuple[NeighborSpec, ...] = ()  # every configured BGP session
    addresses: AddressMode = AddressMode.OFF
    vip_interface: str = "lo"
    remove_vip_on_withdraw: bool = False
    # How long checker faults may hide every target before they stop counting as progress.
    checker_fault_max_s: float = 300.0
    local_as: int = 0  # for the de-preferred AS path of routes drained out of the config
    drain_grace_s: float = 30.0  # how long they are de-preferred before the withdraw
    fleet: bool = False  # etcd configured: withdraws need the fleet guard's permit
    region: str = ""  # the PoP's region, for the fleet's region intents and ramps


def route_keys(spec: PopSpec) -> dict[str, list[RouteKey]]:
    """Every (neighbor, prefix) each service of the config is announced to."""
    return {
        s.name: [
            RouteKey(n.address, str(p))
            for n in s.neighbors
            for p in s.prefixes
            if Family.of(p) in n.families
        ]
        for s in spec.services
    }
