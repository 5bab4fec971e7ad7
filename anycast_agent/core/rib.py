"""What ExaBGP holds versus what the agent wants: the diff that becomes commands (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from anycast_agent.core.commands import Announce, Command, Withdraw
from anycast_agent.model import RouteAttrs, RouteKey


@dataclass
class Rib:
    """ExaBGP's adj-rib-out as the agent knows it: read at start, then updated by acks.

    A withdraw is only ever planned for a route held here, so a withdraw is never repeated
    (ExaBGP sends an UPDATE for every repeated withdraw).
    """

    held: dict[RouteKey, RouteAttrs] = field(default_factory=dict)
    # Routes ExaBGP refused: not retried before the given time.
    refused_until: dict[RouteKey, float] = field(default_factory=dict)
    # Held routes to announce again although unchanged (their session came back up).
    resend: set[RouteKey] = field(default_factory=set)

    def plan(
        self,
        wanted: Mapping[RouteKey, RouteAttrs | None],
        configured: Collection[str],
        now: float,
        causes: Mapping[str, str] | None = None,
    ) -> list[Command]:
        """Commands that move ExaBGP from `held` to `wanted`.

        `configured` is the set of prefixes in the config: a held route for any other prefix
        is withdrawn at once. Routes absent from `wanted` (service still unknown) stay as held.
        `causes` maps a prefix to the reason logged with its command.
        """
        causes = causes or {}
        commands: list[Command] = []
        for key in sorted(self.held):
            if key.prefix not in configured:
                commands.append(Withdraw(key, "prefix no longer configured"))
            elif key in wanted and wanted[key] is None:
                commands.append(Withdraw(key, causes.get(key.prefix, "service down")))
        for key, attrs in sorted((k, a) for k, a in wanted.items() if a is not None):
            changed = self.held.get(key) != attrs or key in self.resend
            if changed and self.refused_until.get(key, -1.0) <= now:
                commands.append(Announce(key, attrs, causes.get(key.prefix, "service up")))
        return commands

    def accepted(self, command: Command) -> None:
        """ExaBGP answered `done`: it now holds what the command says."""
        match command:
            case Announce(key=key, attrs=attrs):
                self.held[key] = attrs
                self.refused_until.pop(key, None)
                self.resend.discard(key)
            case Withdraw(key=key):
                self.held.pop(key, None)
                self.resend.discard(key)

    def refused(self, command: Command, retry_at: float) -> None:
        """ExaBGP answered `error` (or nothing in time): do not hammer it with the same line."""
        match command:
            case Announce(key=key):
                self.held.pop(key, None)
                self.refused_until[key] = retry_at
            case Withdraw(key=key):
                # ExaBGP either never held it or dropped it: either way, never repeat the withdraw.
                self.held.pop(key, None)

    def resend_neighbor(self, neighbor: str) -> None:
        """A session came up: re-send the wanted announces to that neighbor.

        The routes stay held, so a service that goes down later is still withdrawn there.
        """
        self.resend.update(k for k in self.held if k.neighbor == neighbor)
