"""What the core asks the shell to do: typed, frozen commands, each executed by the Agent."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import assert_never

from anycast_agent.core.intents import Intents
from anycast_agent.core.spec import TargetSpec
from anycast_agent.model import Announcing, RouteAttrs, RouteKey, WithdrawKind


@dataclass(frozen=True, slots=True)
class Announce:
    """Send `announce route` for one prefix to one neighbor; answered by CommandAcked."""

    key: RouteKey
    attrs: RouteAttrs
    cause: str


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Send `withdraw route` for one prefix to one neighbor; answered by CommandAcked."""

    key: RouteKey
    cause: str


RouteCommand = Announce | Withdraw


def describe(command: RouteCommand) -> str:
    """The command as the log shows it: `announce P med M [as-path] [community] to N`."""
    match command:
        case Announce(key=key, attrs=a):
            detail = f" med {a.med}" + (f" as-path {list(a.as_path)}" if a.as_path else "")
            if a.communities:
                detail += f" community {list(a.communities)}"
            return f"announce {key.prefix}{detail} to {key.neighbor}"
        case Withdraw(key=key):
            return f"withdraw {key.prefix} to {key.neighbor}"
        case _:
            assert_never(command)


@dataclass(frozen=True, slots=True)
class AddVip:
    """Put the prefix's address on the VIP interface; answered by VipAdded."""

    prefix: str


@dataclass(frozen=True, slots=True)
class RemoveVip:
    """Take the prefix's address off the VIP interface (its last withdraw was acked)."""

    prefix: str


@dataclass(frozen=True, slots=True)
class StartProbe:
    """Start probing a target on its schedule; its results come back as ProbeObserved."""

    service: str
    target: TargetSpec


@dataclass(frozen=True, slots=True)
class StopProbe:
    """Stop probing a target (removed or changed by a reload)."""

    service: str
    target: str


@dataclass(frozen=True, slots=True)
class Persist:
    """Write the intents to the state file; answered by Persisted with the same ticket
    (None: a change the core made itself, such as an expiry)."""

    ticket: int | None
    intents: Intents


@dataclass(frozen=True, slots=True)
class AskGuard:
    """Ask the fleet guard to permit withdrawing `service` at this PoP; answered by
    GuardAnswered (a lost answer is a refusal: never withdraw on an unknown outcome)."""

    service: str
    kind: WithdrawKind


@dataclass(frozen=True, slots=True)
class Publish:
    """Every service's state for the fleet (`svc/<svc>/pop/<pop>`); the shell writes what
    changed, and all of it again under a new lease."""

    states: tuple[tuple[str, Announcing], ...]


class RefusalKind(enum.StrEnum):
    UNKNOWN_SERVICE = "unknown service"
    CONFLICT = "conflict"
    NOT_PERSISTED = "not persisted"  # the state file could not be written: nothing changed
    BUSY = "busy"  # another change is being persisted


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: RefusalKind
    message: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer an operator request: accepted (refusal None) or refused, and why."""

    ticket: int
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Every service is decided: tell the supervisor (READY=1), once."""


class LogLevel(enum.IntEnum):
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the operator's log (the core decides what to say, the shell writes it)."""

    level: LogLevel
    message: str


Command = (
    Announce
    | Withdraw
    | AddVip
    | RemoveVip
    | StartProbe
    | StopProbe
    | Persist
    | Reply
    | Ready
    | Log
    | AskGuard
    | Publish
)


def info(message: str) -> Log:
    return Log(LogLevel.INFO, message)


def warn(message: str) -> Log:
    return Log(LogLevel.WARNING, message)


def error(message: str) -> Log:
    return Log(LogLevel.ERROR, message)
