"""What happens to the PoP, as the core hears it: typed, frozen events, each stamped with time.

The shell turns every input (a probe result, an ExaBGP message or ack, a netlink answer, an
operator request, a reload, the clock) into one of these and hands it to `Pop.handle`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from anycast_agent.core.commands import RouteCommand
from anycast_agent.core.intents import RampAction
from anycast_agent.core.spec import PopSpec
from anycast_agent.model import (
    FleetMode,
    NeighborState,
    ProbeResult,
    RefusalReason,
    RouteAttrs,
    RouteKey,
)


@dataclass(frozen=True, slots=True)
class Instant:
    """When an event happened: `mono` orders and times everything; `wall` only stamps and
    expires operator intents (they are persisted and outlive the process)."""

    mono: float
    wall: float


class AckResult(enum.StrEnum):
    DONE = "done"  # ExaBGP took the command into its RIB
    ERROR = "error"  # ExaBGP refused it (or it could not be rendered)
    TIMEOUT = "timeout"  # no answer in time: it may or may not have been applied


@dataclass(frozen=True, slots=True)
class Synced:
    """ExaBGP's truth at start: the sessions it reports and the routes it holds."""

    at: Instant
    neighbors: Mapping[str, NeighborState]
    held: Mapping[RouteKey, RouteAttrs]
    # The service each route belonged to in the last-good config (the previous run's), so a
    # route the config dropped meanwhile drains out under its service's name (fleet guard).
    former: Mapping[RouteKey, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeObserved:
    at: Instant
    service: str
    target: str
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class ProbeSkipped:
    """A probe overran its interval: `slots` of its schedule were skipped."""

    at: Instant
    service: str
    target: str
    slots: int


@dataclass(frozen=True, slots=True)
class CanaryObserved:
    """A check of the agent's own loopback canary: when it fails, probing itself is broken."""

    at: Instant
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class NeighborChanged:
    at: Instant
    neighbor: str
    state: NeighborState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CommandAcked:
    """ExaBGP's answer to a route command the core asked for."""

    at: Instant
    command: RouteCommand
    result: AckResult


@dataclass(frozen=True, slots=True)
class VipsListed:
    """`addresses.mode: check`: the addresses on the interface (None: they could not be
    listed, `error` says why)."""

    at: Instant
    present: frozenset[str] | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class VipAdded:
    """`addresses.mode: manage`: the answer to AddVip (`error` empty when the address is up)."""

    at: Instant
    prefix: str
    error: str = ""


# --- operator requests (each answered by exactly one Reply command) ---------------------------


@dataclass(frozen=True, slots=True)
class DrainRequest:
    service: str | None  # None: the whole PoP
    reason: str
    author: str
    expires_in_s: float | None = None
    on_stop: bool = False  # the unit is stopping: applies now, never persisted
    neighbor: str | None = None  # one BGP session only (its routes), else every session
    override_fleet: bool = False  # break-glass: withdraw without the fleet guard's permit


@dataclass(frozen=True, slots=True)
class UndrainRequest:
    service: str | None
    author: str
    neighbor: str | None = None


@dataclass(frozen=True, slots=True)
class SetMedRequest:
    service: str
    med: int
    reason: str
    author: str
    expires_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class ClearMedRequest:
    service: str
    author: str


@dataclass(frozen=True, slots=True)
class RampRequest:
    service: str
    action: RampAction
    author: str


@dataclass(frozen=True, slots=True)
class StateResetRequest:
    """`anycast-agent state reset`: the unreadable state file is replaced by no intents."""

    reason: str
    author: str
    service: None = None  # a PoP-wide request


OperatorRequest = (
    DrainRequest
    | UndrainRequest
    | SetMedRequest
    | ClearMedRequest
    | RampRequest
    | StateResetRequest
)


@dataclass(frozen=True, slots=True)
class IntentSubmitted:
    """An operator request; `ticket` pairs it with its Reply."""

    at: Instant
    ticket: int
    request: OperatorRequest


@dataclass(frozen=True, slots=True)
class Persisted:
    """The answer to Persist: `error` empty when the intents are on disk."""

    at: Instant
    ticket: int | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ConfigSwapped:
    """A reload validated a new config: apply it as a diff."""

    at: Instant
    spec: PopSpec = field(compare=False)
    allow_withdraw: bool = False  # the operator confirms removing more than half the routes


@dataclass(frozen=True, slots=True)
class RibRead:
    """ExaBGP's adj-rib-out read again (every resync_interval and after a session came up):
    it may differ from what its acks said, if ExaBGP reloaded its own config (R27)."""

    at: Instant
    held: Mapping[RouteKey, RouteAttrs]


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """ExaBGP's command channel is gone (stdin EOF)."""

    at: Instant


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: take a decision step (services with news, timers due, the sweep)."""

    at: Instant


@dataclass(frozen=True, slots=True)
class FleetModeChanged:
    """The coordination with etcd changed mode (FLEET.md §3.4)."""

    at: Instant
    mode: FleetMode
    why: str


@dataclass(frozen=True, slots=True)
class FleetViewChanged:
    """Something the guard reads changed (a PoP's state, the policy, the freeze, a budget
    slot): a refused withdraw asks again."""

    at: Instant


@dataclass(frozen=True, slots=True)
class FleetCtlChanged:
    """The fleet's `ctl/` keys (names relative to `ctl/`, raw values) at `revision`: from etcd,
    or from the agent's own copy at start (FLEET.md §3.8)."""

    at: Instant
    ctl: Mapping[str, bytes]
    revision: int


@dataclass(frozen=True, slots=True)
class GuardAnswered:
    """The fleet guard's answer to AskGuard: permitted (`refused` None) or refused."""

    at: Instant
    service: str
    refused: RefusalReason | None
    detail: str = ""


Event = (
    Synced
    | ProbeObserved
    | ProbeSkipped
    | CanaryObserved
    | NeighborChanged
    | CommandAcked
    | VipsListed
    | VipAdded
    | IntentSubmitted
    | Persisted
    | ConfigSwapped
    | ChannelClosed
    | RibRead
    | Tick
    | FleetModeChanged
    | FleetViewChanged
    | FleetCtlChanged
    | GuardAnswered
)
