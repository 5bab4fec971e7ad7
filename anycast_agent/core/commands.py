"""The route commands the core asks the shell to send to ExaBGP, each with its cause."""

from __future__ import annotations

from dataclasses import dataclass

from anycast_agent.model import RouteAttrs, RouteKey


@dataclass(frozen=True, slots=True)
class Announce:
    key: RouteKey
    attrs: RouteAttrs
    cause: str


@dataclass(frozen=True, slots=True)
class Withdraw:
    key: RouteKey
    cause: str


Command = Announce | Withdraw
