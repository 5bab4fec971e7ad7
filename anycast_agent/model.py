"""Small immutable value types shared by every layer: probe results, target states, routes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

Prefix: TypeAlias = IPv4Network | IPv6Network
IPAddress: TypeAlias = IPv4Address | IPv6Address

# The highest MED a route can carry; drain uses one less so an explicit override can still win.
MED_MAX = 4294967295
MED_DRAIN = 4294967294
# ExaBGP holds the route without a MED: never what the agent sent (every MED it sends is
# explicit), e.g. a static route of ExaBGP's own config after a reload (R27). Read only.
MED_MISSING = -1
GRACEFUL_SHUTDOWN = "65535:0"


class Family(enum.StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @staticmethod
    def of(prefix: Prefix | IPAddress) -> Family:
        return Family.IPV4 if prefix.version == 4 else Family.IPV6


class NeighborState(enum.StrEnum):
    """A BGP session as ExaBGP reports it (its `up` event and `established` summary agree)."""

    ESTABLISHED = "established"
    CONNECTED = "connected"  # TCP up, BGP not (yet) established
    DOWN = "down"


class TargetState(enum.StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    SUSPICIOUS = "suspicious"
    UNHEALTHY = "unhealthy"
    RECOVERING = "recovering"


class CheckerFault(enum.StrEnum):
    """Why a check failed in the agent itself rather than at its target (DESIGN §3.2a): the
    errno of a local socket or spawn failure, or one of the agent's own helpers."""

    EMFILE = "EMFILE"  # the agent's fd limit
    ENFILE = "ENFILE"  # the system's fd limit
    ENOBUFS = "ENOBUFS"
    ENOMEM = "ENOMEM"
    EADDRNOTAVAIL = "EADDRNOTAVAIL"  # no local address or port to connect from
    EAGAIN = "EAGAIN"  # fork refused (process limit)
    EPERM = "EPERM"  # connect or send refused locally, e.g. an nft output drop
    EACCES = "EACCES"
    RESOLVER = "resolver"  # the agent's resolver failed for a host-name target
    NETLINK = "netlink"  # `addresses.mode: check` could not list the interface
    CANARY = "canary"  # the agent could not even probe its own loopback canary


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One finished check. `reason` says why it failed ("" when ok); `checker` is set when the
    failure is the agent's own (it then says nothing about the target), `bug` when the probe
    code raised (a target failure all the same: a parser bug must not freeze routing)."""

    ok: bool
    latency_s: float
    reason: str = ""
    load: float | None = None  # 0.0-1.0 when the target reports it
    checker: CheckerFault | None = None
    bug: bool = False


@dataclass(frozen=True, slots=True)
class RouteAttrs:
    """What the agent announces for one prefix: every MED is explicit."""

    med: int
    as_path: tuple[int, ...] = ()
    communities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class RouteKey:
    """A route as ExaBGP holds it: one prefix towards one neighbor."""

    neighbor: str  # the neighbor address in canonical text form
    prefix: str  # canonical CIDR text

    @staticmethod
    def of(neighbor: IPAddress, prefix: Prefix) -> RouteKey:
        return RouteKey(str(neighbor), str(prefix))


class FleetMode(enum.StrEnum):
    STANDALONE = "standalone"  # no etcd configured: local decisions only
    CONNECTED = "connected"  # lease alive, view fresh: withdraws go through the guard
    DEGRADED = "degraded"  # etcd unreachable or stale: no new withdraw is granted


class Announcing(enum.StrEnum):
    """A service's state at one PoP as the fleet sees it (`svc/<svc>/pop/<pop>`)."""

    ANNOUNCED = "A"  # announced, confirmed by ExaBGP, a session up
    DEPREFERRED = "D"  # announced but de-preferred: still counts as announcing
    WITHDRAWN = "W"  # withdrawn by decision
    SILENT = "S"  # not announcing for a reason the agent did not choose (sessions down)


class WithdrawKind(enum.StrEnum):
    HEALTH = "health"  # asks at once, takes a budget slot
    DRAIN = "drain"  # asks after drain_grace, takes no slot


class RefusalReason(enum.StrEnum):
    TOO_FEW = "too few other PoPs announcing"
    FROZEN = "the fleet is frozen"
    BUDGET = "the withdraw budget is used up"
    DEGRADED = "etcd unreachable: no withdraw is granted"
    UNANSWERED = "the guard could not get an answer"
