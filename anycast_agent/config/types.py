"""The value types the config is written in: durations, prefixes, addresses, communities."""

from __future__ import annotations

import math
import re
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Annotated, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from anycast_agent.model import MED_MAX

ENV_PREFIX = "ANYCAST_AGENT_"

_DURATION = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`1s`, `800ms`, `2m` or a plain number of seconds → seconds (float, never negative)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 1s or 800ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m["num"]) * _UNIT_S[m["unit"]]
    else:
        raise ValueError(f"expected a duration like 1s or 800ms, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number ≥ 0, got {value!r}")
    return seconds


def _network(value: object) -> IPv4Network | IPv6Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a prefix like 192.0.2.10/32, got {value!r}")
    try:
        return ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid prefix {value!r}: {exc}") from None


def _address(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {value!r}")
    try:
        return ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


def _community(value: object) -> str:
    text = str(value)
    m = re.fullmatch(r"(\d{1,5}):(\d{1,5})", text)
    if not m or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise ValueError(f"invalid community {value!r}: expected ASN:VALUE, both 0-65535")
    return f"{int(m[1])}:{int(m[2])}"


Duration: TypeAlias = Annotated[float, BeforeValidator(parse_duration)]
Network: TypeAlias = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]
Address: TypeAlias = Annotated[IPv4Address | IPv6Address, BeforeValidator(_address)]
Community: TypeAlias = Annotated[str, BeforeValidator(_community)]
ASN: TypeAlias = Annotated[int, Field(ge=1, le=4294967294)]
Med: TypeAlias = Annotated[int, Field(ge=0, le=MED_MAX)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # services and targets
NAME_RE = re.compile(NAME_PATTERN)
Name: TypeAlias = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
