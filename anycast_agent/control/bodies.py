"""The JSON bodies of operator requests: strict models, one line of printable text each."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import Annotated, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from anycast_agent.config import parse_duration
from anycast_agent.core.intents import MAX_EXPIRY_S, RampAction
from anycast_agent.model import MED_MAX


def _text(max_len: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, str):
            # Reasons and authors land in the state file, logs and status tables: one line,
            # no control characters (the same rule ExaBGP's healthcheck applies).
            if not value.isprintable():
                raise ValueError("must contain printable characters only (no newline/control)")
            if not value.strip():
                raise ValueError("must not be blank")
            if len(value) > max_len:
                raise ValueError(f"must be at most {max_len} characters, got {len(value)}")
        return value

    return check


def _expiry(value: object) -> object:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration like 30m or 45s, got {value!r}")
    if seconds > MAX_EXPIRY_S:
        raise ValueError(f"must be at most {MAX_EXPIRY_S / 86400:g} days, got {value!r}")
    return seconds


Reason: TypeAlias = Annotated[str, Field(strict=True), BeforeValidator(_text(200))]
Author: TypeAlias = Annotated[str, Field(strict=True), BeforeValidator(_text(64))]
Expiry: TypeAlias = Annotated[float | None, BeforeValidator(_expiry)]


def _neighbor(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address as text, got {value!r}")
    try:
        return str(ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IP address, got {value!r}") from None


# One BGP session (its neighbor address); the core checks the service announces to it.
Neighbor: TypeAlias = Annotated[str | None, BeforeValidator(_neighbor)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    author: Author | None = None


class UndrainBody(Body):
    neighbor: Neighbor = None


class DrainBody(Body):
    reason: Reason
    expires_in: Expiry = None
    neighbor: Neighbor = None
    # The unit is stopping (its ExecStop): the drain applies now and is never persisted.
    on_stop: Annotated[bool, Field(strict=True)] = False
    # Break-glass: the withdraw needs no permit from the fleet guard (etcd unreachable).
    override_fleet: Annotated[bool, Field(strict=True)] = False


class MedBody(Body):
    med: Annotated[int, Field(strict=True, ge=0, le=MED_MAX)]
    reason: Reason
    expires_in: Expiry = None


class RampBody(Body):
    action: RampAction

    @field_validator("action", mode="before")
    @classmethod
    def _known(cls, v: object) -> object:
        if v not in {a.value for a in RampAction}:
            raise ValueError(f"must be one of {', '.join(a.value for a in RampAction)}")
        return v


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Confirms removing routes the new config drops when they are more than half of the PoP's.
    allow_withdraw: Annotated[bool, Field(strict=True)] = False


class ResetBody(Body):
    reason: Reason
