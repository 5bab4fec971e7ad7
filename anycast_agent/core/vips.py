"""The VIP gate (DESIGN §3.3 `addresses.mode`): which prefixes may be announced for their address.

`check`: a prefix whose address is missing on the interface is treated as down. `manage`: an
announce waits until its address is confirmed up (AddVip → VipAdded), and with
`remove_on_withdraw` the address goes once the last withdraw of its prefix is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anycast_agent.core.commands import AddVip, Command, error, info, warn
from anycast_agent.core.events import VipAdded, VipsListed
from anycast_agent.core.spec import AddressMode, PopSpec

# How long an address the kernel refused waits before it is tried again.
VIP_RETRY_S = 30.0


@dataclass
class VipGate:
    mode: AddressMode
    interface: str
    present: frozenset[str] | None = None  # check: addresses listed (None: not listed yet)
    problem: str = ""  # check: why listing fails now (a checker fault; "" when it works)
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
        """A listing, or (present None) a failure to list: a checker fault, which keeps the
        last listing (DESIGN §3.2a) instead of withholding every prefix. Log lines when
        something changed (empty: nothing did)."""
        if event.present is None:
            began, self.problem = not self.problem, event.error or "netlink error"
            if not began:
                return []
            return [
                error(
                    f"VIP check on {self.interface}: {self.problem}: keeping the last "
                    "listing (a checker fault, never a withdraw)"
                )
            ]
        out: list[Command] = [info("VIP check works again")] if self.problem else []
        self.present, self.problem = event.present, ""
        before, self.withheld = self.withheld, self.missing(spec)
        if self.withheld != before:
            what = ", ".join(sorted(self.withheld)) or "nothing"
            out.append(warn(f"VIP check on {self.interface}: withholding {what}"))
        return out

    def missing(self, spec: PopSpec) -> set[str]:
        if self.mode is not AddressMode.CHECK or self.present is None:
            return set()
        present = self.present
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
