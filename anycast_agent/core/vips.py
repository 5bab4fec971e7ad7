"""The VIP gate (DESIGN §3.3 `addresses.mode`): which prefixes may be announced for their address.

`check`: a prefix whose address is missing on the interface is treated as down. `manage`: an
announce waits until its address is confirmed up (AddVip → VipAdded), and with
`remove_on_withdraw` the address goes once the last withdraw of its prefix is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anycast_agent.core.commands import AddVip, Command, error, warn
from anycast_agent.core.events import VipAdded, VipsListed
from anycast_agent.core.spec import AddressMode, PopSpec

# How long an address the kernel refused waits before it is tried again.
VIP_RETRY_S = 30.0


@dataclass
class VipGate:
    mode: AddressMode
    interface: str
    present: frozenset[str] | None = None  # check: addresses listed (None: not listed yet)
    problem: str = ""  # check: why the last listing failed
    withheld: set[str] = field(default_factory=set)  # check: prefixes treated as down
    up: set[str] = field(default_factory=set)  # manage: prefixes whose address is confirmed
    asked: set[str] = field(default_factory=set)  # manage: AddVip sent, no answer yet
    retry: dict[str, float] = field(default_factory=dict)  # manage: refused until then

    @property
    def waiting(self) -> bool:
        """`check` decides nothing before the first listing: a respawn must not withdraw a
        held route because its address has not been looked at yet."""
        return self.mode is AddressMode.CHECK and self.present is None

    def listed(self, event: VipsListed, spec: PopSpec) -> list[Command]:
        """A new listing; log lines when what is withheld changed (empty list: no change)."""
        self.present = event.present if event.present is not None else frozenset()
        self.problem = event.error if event.present is None else ""
        before = self.withheld
        self.withheld = self.missing(spec)
        if self.withheld == before:
            return []
        if self.problem:
            return [error(f"VIP check: {self.problem}: every prefix is withheld")]
        what = ", ".join(sorted(self.withheld)) or "nothing"
        return [warn(f"VIP check on {self.interface}: withholding {what}")]

    def missing(self, spec: PopSpec) -> set[str]:
        if self.mode is not AddressMode.CHECK or self.present is None:
            return set()
        present = frozenset() if self.problem else self.present
        return {
            str(p)
            for s in spec.services
            for p in s.prefixes
            if str(p.network_address) not in present
        }

    def added(self, event: VipAdded) -> list[Command]:
        self.asked.discard(event.prefix)
        if event.error:
            self.retry[event.prefix] = event.at.mono + VIP_RETRY_S
            return [error(f"{event.error}: not announcing {event.prefix}")]
        self.up.add(event.prefix)
        return []

    def before_announce(self, prefix: str, now: float) -> list[Command] | None:
        """None when the announce may go out; else what to do first (maybe nothing yet)."""
        if self.mode is not AddressMode.MANAGE or prefix in self.up:
            return None
        if prefix in self.asked or self.retry.get(prefix, 0.0) > now:
            return []
        self.asked.add(prefix)
        return [AddVip(prefix)]

    def next_retry(self) -> float | None:
        return min(self.retry.values(), default=None)

    def expire(self, now: float) -> None:
        self.retry = {p: t for p, t in self.retry.items() if t > now}
