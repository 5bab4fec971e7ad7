"""Drives the PoP core as the Agent does, with a fake clock: events in, commands out.

Every route command is answered by ExaBGP's `done` unless the test answers it itself
(`auto_ack=None`), every Persist and AddVip succeeds unless `persist_error` or `vip_error`
says why not; what the test reads is what the core commanded and what it reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from anycast_agent.config import AgentConfig, pop_spec
from anycast_agent.core.commands import (
    AddVip,
    Announce,
    Command,
    Log,
    Persist,
    Reply,
    RouteCommand,
    Withdraw,
)
from anycast_agent.core.events import (
    AckResult,
    CommandAcked,
    Event,
    Instant,
    IntentSubmitted,
    OperatorRequest,
    Persisted,
    ProbeObserved,
    Synced,
    Tick,
    VipAdded,
)
from anycast_agent.core.intents import Intents
from anycast_agent.core.pop import Pop
from anycast_agent.core.snapshot import About, ServiceSnapshot
from anycast_agent.model import NeighborState, ProbeResult, RouteAttrs, RouteKey, TargetState

WALL0 = 1_000_000.0  # wall clock at mono 0
S = TargetState


class Playbook:
    def __init__(
        self,
        config: AgentConfig,
        *,
        intents: Intents | None = None,
        state_unreadable: str = "",
    ) -> None:
        self.config = config
        self.pop = Pop(
            pop_spec(config),
            About("test", WALL0, starts=1),
            self.at(0),
            intents,
            state_unreadable=state_unreadable,
        )
        self.auto_ack: AckResult | None = AckResult.DONE
        self.persist_error = ""
        self.vip_error = ""
        self.log: list[Command] = []  # every command, in order
        self.unanswered: list[RouteCommand] = []  # route commands waiting for a manual ack
        self.tickets = 0

    @staticmethod
    def at(t: float, wall: float | None = None) -> Instant:
        return Instant(t, WALL0 + t if wall is None else wall)

    # -- feeding events ------------------------------------------------------------------------

    def send(self, event: Event) -> list[Command]:
        """Hand the event to the core and play the shell's part for what comes back."""
        out = self.pop.handle(event)
        self.log += out
        extra: list[Command] = []
        for command in out:
            match command:
                case Announce() | Withdraw():
                    if self.auto_ack is None:
                        self.unanswered.append(command)
                    else:
                        extra += self.send(CommandAcked(event.at, command, self.auto_ack))
                case Persist(ticket=ticket):
                    extra += self.send(Persisted(event.at, ticket, self.persist_error))
                case AddVip(prefix=prefix):
                    extra += self.send(VipAdded(event.at, prefix, self.vip_error))
        return out + extra

    def sync(
        self,
        t: float = 0,
        held: Mapping[RouteKey, RouteAttrs] | None = None,
        neighbors: Mapping[str, NeighborState] | None = None,
    ) -> list[Command]:
        if neighbors is None:
            neighbors = {
                str(n.address): NeighborState.ESTABLISHED for n in self.config.bgp.neighbors
            }
        return self.send(Synced(self.at(t), neighbors, dict(held or {}))) + self.tick(t)

    def tick(self, t: float, wall: float | None = None) -> list[Command]:
        return self.send(Tick(self.at(t, wall)))

    def result(
        self, t: float, target: str, ok: bool, service: str = "web", **kw: Any
    ) -> list[Command]:
        return self.send(
            ProbeObserved(
                self.at(t), service, target, ProbeResult(ok, 0.01, "" if ok else "HTTP 500", **kw)
            )
        )

    def health(
        self,
        t: float,
        states: str,
        service: str = "web",
        load: float | None = None,
        wall: float | None = None,
    ) -> list[Command]:
        """Drive each target of `service` to the state its letter names (h healthy, x unhealthy,
        s suspicious, r recovering; u leaves it), with real probe results, then take a step."""
        out: list[Command] = []
        want = {"h": S.HEALTHY, "x": S.UNHEALTHY, "s": S.SUSPICIOUS, "r": S.RECOVERING}
        for record, letter in zip(self.pop.targets[service], states, strict=True):
            if letter == "u":
                continue
            for _ in range(20):
                if record.health.state is want[letter] and (
                    load is None or record.last is None or record.last.load == load
                ):
                    break
                ok = letter in "hr"
                if letter == "s" and record.health.state is not S.HEALTHY:
                    ok = True
                if letter == "r" and record.health.state is not S.UNHEALTHY:
                    ok = False
                out += self.result(t, record.spec.name, ok, service, load=load if ok else None)
            assert record.health.state is want[letter], (record.spec.name, record.health)
        return out + self.tick(t, wall)

    def ack(self, result: AckResult, t: float = 0) -> list[Command]:
        """Answer the oldest unanswered route command."""
        return self.send(CommandAcked(self.at(t), self.unanswered.pop(0), result))

    def request(self, t: float, request: OperatorRequest) -> Reply:
        self.tickets += 1
        out = self.send(IntentSubmitted(self.at(t), self.tickets, request))
        [reply] = [c for c in out if isinstance(c, Reply) and c.ticket == self.tickets]
        return reply

    # -- reading what the core did -------------------------------------------------------------

    def routes(self) -> dict[RouteKey, RouteAttrs]:
        """What ExaBGP holds, as the core knows it from the acks."""
        return dict(self.pop.rib.held)

    def meds(self) -> set[int]:
        return {a.med for a in self.routes().values()}

    def service(self, name: str = "web") -> ServiceSnapshot:
        snap = self.pop.snapshot().service(name)
        assert snap is not None
        return snap

    def logs(self) -> list[str]:
        return [c.message for c in self.log if isinstance(c, Log)]


def routes_of(commands: list[Command]) -> list[RouteCommand]:
    return [c for c in commands if isinstance(c, Announce | Withdraw)]


def pop_config(neighbors: Sequence[str], services: list[dict[str, Any]], **top: Any) -> AgentConfig:
    """A config of the given sessions (IPv4 or IPv6 by address) and services."""

    def local(address: str) -> str:
        return "2001:db8:100::2" if ":" in address else "198.51.100.2"

    bgp = {
        "local_as": 65001,
        "router_id": "198.51.100.2",
        "neighbors": [
            {"address": a, "local_address": local(a), "peer_as": 65000} for a in neighbors
        ],
    }
    return AgentConfig(pop="t", state_dir="/nonexistent", bgp=bgp, services=services, **top)


def tcp_targets(count: int) -> list[dict[str, Any]]:
    return [{"name": f"e{i}", "tcp": {"host": "203.0.113.11", "port": 80}} for i in range(count)]
