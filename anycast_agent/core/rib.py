"""What ExaBGP holds versus what the agent wants: the diff that becomes commands (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from anycast_agent.core.commands import Announce, RouteCommand, Withdraw
from anycast_agent.model import RouteAttrs, RouteKey

# How long a route ExaBGP refused waits before it is tried again, doubling with each refusal
# in a row (R24: a config ExaBGP rejects must not become a command storm).
REFUSED_RETRY_S = 30.0
REFUSED_RETRY_MAX_S = 480.0


@dataclass
class Rib:
    """ExaBGP's adj-rib-out as the agent knows it: read at start, then updated by acks.

    A withdraw is only planned for a route held here, so a withdraw is never repeated (ExaBGP
    sends an UPDATE for every repeated withdraw). A route whose fate is unknown (a command
    without an ack in time) stays held: the agent would rather send one withdraw too many than
    leave a dead service announced.
    """

    held: dict[RouteKey, RouteAttrs] = field(default_factory=dict)
    # Commands ExaBGP refused or did not answer: that same command is not sent again before
    # the given time (any other command for the route goes out at once).
    blocked: dict[RouteKey, tuple[RouteCommand, float]] = field(default_factory=dict)
    # Held routes to announce again although unchanged (their session came back up, or the
    # last announce of them went unanswered).
    resend: set[RouteKey] = field(default_factory=set)
    # Routes with a command sent and not yet answered: planned no further until its ack.
    in_flight: set[RouteKey] = field(default_factory=set)
    # Refusals in a row of each route's announce (the retry backs off with them).
    refusals: dict[RouteKey, int] = field(default_factory=dict)

    def plan(
        self,
        wanted: Mapping[RouteKey, RouteAttrs | None],
        allowed: Collection[RouteKey],
        now: float,
        causes: Mapping[str, str] | None = None,
    ) -> list[RouteCommand]:
        """Commands that move ExaBGP from `held` to `wanted`.

        `allowed` is every (neighbor, prefix) the config maps a service to: a held route
        outside it and outside `wanted` (the core drains those out through `wanted`) is
        withdrawn at once. Routes absent from `wanted` (service still unknown) stay as held.
        `causes` maps a prefix to the reason logged with its command.
        """
        causes = causes or {}
        for key in [k for k, (_, t) in self.blocked.items() if t <= now]:
            del self.blocked[key]  # a past refusal no longer holds anything back
        commands: list[RouteCommand] = []
        for key in sorted(self.held):
            if key not in allowed and key not in wanted:
                commands.append(Withdraw(key, "no longer configured for this neighbor"))
            elif key in wanted and wanted[key] is None:
                commands.append(Withdraw(key, causes.get(key.prefix, "service down")))
        for key, attrs in sorted((k, a) for k, a in wanted.items() if a is not None):
            if self.held.get(key) != attrs or key in self.resend:
                commands.append(Announce(key, attrs, causes.get(key.prefix, "service up")))
        return [c for c in commands if c.key not in self.in_flight and not self._blocked(c)]

    def _blocked(self, command: RouteCommand) -> bool:
        entry = self.blocked.get(command.key)
        if entry is None:
            return False
        refused = entry[0]
        match command, refused:
            case Announce(attrs=a), Announce(attrs=b):
                return a == b
            case Withdraw(), Withdraw():
                return True
        return False

    def next_retry(self, now: float) -> float | None:
        """When the earliest refused command may be tried again (None: nothing waits)."""
        return min((t for _, t in self.blocked.values() if t > now), default=None)

    def accepted(self, command: RouteCommand) -> None:
        """ExaBGP answered `done`: it now holds what the command says."""
        self.blocked.pop(command.key, None)
        self.refusals.pop(command.key, None)
        self.resend.discard(command.key)
        match command:
            case Announce(key=key, attrs=attrs):
                self.held[key] = attrs
            case Withdraw(key=key):
                self.held.pop(key, None)

    def refused(self, command: RouteCommand, now: float) -> float | None:
        """ExaBGP answered `error`: it did not take the command; it keeps what it had. The same
        announce waits REFUSED_RETRY_S, doubling with each refusal in a row up to
        REFUSED_RETRY_MAX_S; returns when it is tried again (None: a withdraw, not retried)."""
        if isinstance(command, Withdraw):
            # ExaBGP refuses a withdraw only for a neighbor it does not know: nothing is held.
            self.held.pop(command.key, None)
            self.blocked.pop(command.key, None)
            return None
        count = self.refusals[command.key] = self.refusals.get(command.key, 0) + 1
        retry_at: float = now + min(REFUSED_RETRY_S * 2.0 ** (count - 1), REFUSED_RETRY_MAX_S)
        self.blocked[command.key] = (command, retry_at)
        return retry_at

    def unanswered(self, command: RouteCommand, retry_at: float) -> None:
        """No ack in time: ExaBGP may or may not have applied it. Assume it did, and try the
        same command again after `retry_at` (an identical announce costs nothing)."""
        self.blocked[command.key] = (command, retry_at)
        match command:
            case Announce(key=key, attrs=attrs):
                self.held[key] = attrs
                self.resend.add(key)
            case Withdraw():
                pass  # still held: the withdraw is planned again after retry_at

    def reread(
        self,
        theirs: Mapping[RouteKey, RouteAttrs],
        mapped: Collection[RouteKey],
        up: Collection[str],
    ) -> list[RouteKey]:
        """Take what ExaBGP says it holds for the mapped routes towards established neighbors
        (`up`) with no command in flight; the routes where that differs from what its acks
        said (the next plan corrects them). A down session's routes are left as they are: a
        withdraw still owed to it must not be forgotten."""
        fixed = []
        for key in sorted(mapped):
            actual = theirs.get(key)
            if key.neighbor not in up or key in self.in_flight or self.held.get(key) == actual:
                continue
            fixed.append(key)
            if actual is None:
                self.held.pop(key, None)
            else:
                self.held[key] = actual
        return fixed

    def resend_neighbor(self, neighbor: str) -> None:
        """A session came up: re-send the wanted announces to that neighbor.

        The routes stay held, so a service that goes down later is still withdrawn there.
        """
        self.resend.update(k for k in self.held if k.neighbor == neighbor)
