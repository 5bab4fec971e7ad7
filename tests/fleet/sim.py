"""Simulated PoPs for fleet tests against a real etcd: each is the real core (`Pop`) and the real
`Coordinator`, with ExaBGP replaced by a RIB that acknowledges every command and logs it.

Health is fed as probe results (no edges), so a test decides which PoPs fail and when; the
routes each PoP sends are in `rib_log`, which the invariant checks read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anycast_agent.config import AgentConfig, pop_spec
from anycast_agent.core import commands as c
from anycast_agent.core import events as e
from anycast_agent.core.pop import Pop
from anycast_agent.core.snapshot import About
from anycast_agent.fleet.coordinator import Coordinator
from anycast_agent.fleet.setup import coordinator_for
from anycast_agent.model import MED_DRAIN, FleetMode, NeighborState, ProbeResult, RouteKey

NEIGHBOR = "198.51.100.1"
VIP = "192.0.2.10/32"
KEY = RouteKey(NEIGHBOR, VIP)
STEP_S = 0.02


@dataclass(frozen=True)
class RibEntry:
    t: float  # time.monotonic()
    pop: str
    what: str  # "A" announced, "D" de-preferred, "W" withdrawn


def sim_config(
    pop: str, endpoints: list[str], prefix: str, state_dir: Path, **fleet: Any
) -> AgentConfig:
    return AgentConfig(
        pop=pop,
        state_dir=state_dir / pop,
        bgp={
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "neighbors": [{"address": NEIGHBOR, "local_address": "198.51.100.2", "peer_as": 65000}],
        },
        defaults={"ramp": {"stages": [100]}, "min_update_interval": 0, "drain_grace": 0.5},
        services=[
            {
                "name": "web",
                "prefixes": [VIP],
                "med": 100,
                "targets": [{"name": "e0", "tcp": {"host": "203.0.113.11", "port": 80}}],
            }
        ],
        fleet={
            "endpoints": endpoints,
            "prefix": prefix,
            "lease_ttl": 3,
            "timeout": 0.5,
            "stale_after": 2,
            **fleet,
        },
    )


class SimPop:
    def __init__(self, config: AgentConfig, rib_log: list[RibEntry]) -> None:
        self.name = config.pop
        self.pop = Pop(pop_spec(config), About("sim", time.time(), 1), self.now())
        self.coordinator: Coordinator = coordinator_for(config, self.handle, self.now)
        self.rib_log = rib_log
        self.state = "W"  # what this PoP's RIB holds
        self.modes: list[FleetMode] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    @staticmethod
    def now() -> e.Instant:
        return e.Instant(time.monotonic(), time.time())

    async def start(self) -> None:
        await self.handle(e.Synced(self.now(), {NEIGHBOR: NeighborState.ESTABLISHED}, {}))
        self._tasks = [
            asyncio.create_task(self.coordinator.run(), name=f"{self.name}:coordinator"),
            asyncio.create_task(self._steps(), name=f"{self.name}:steps"),
        ]
        await self.health(ok=True)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.coordinator.client.close()

    async def health(self, ok: bool) -> None:
        """Enough probe results to make the one target healthy (rise 2) or unhealthy (fall 3)."""
        for _ in range(3):
            result = ProbeResult(ok, 0.001, "" if ok else "connection refused")
            await self.handle(e.ProbeObserved(self.now(), "web", "e0", result))
        await self.handle(e.Tick(self.now()))

    @property
    def mode(self) -> FleetMode:
        return self.pop.fleet.mode

    async def handle(self, event: e.Event) -> None:
        async with self._lock:
            pending = [event]
            while pending:
                for command in self.pop.handle(pending.pop(0)):
                    pending += self._execute(command)
        if isinstance(event, e.FleetModeChanged):
            self.modes.append(event.mode)

    def _execute(self, command: c.Command) -> list[e.Event]:
        now = self.now()
        match command:
            case c.Announce(attrs=attrs):
                self._log("D" if attrs.med == MED_DRAIN else "A")
                return [e.CommandAcked(now, command, e.AckResult.DONE)]
            case c.Withdraw():
                self._log("W")
                return [e.CommandAcked(now, command, e.AckResult.DONE)]
            case c.AskGuard(service=service, kind=kind):
                self._tasks.append(asyncio.create_task(self._ask(service, kind)))
            case c.Publish(states=states):
                self.coordinator.publish(dict(states))
            case c.Persist(ticket=ticket):
                return [e.Persisted(now, ticket)]
        return []

    def _log(self, what: str) -> None:
        self.state = what
        self.rib_log.append(RibEntry(time.monotonic(), self.name, what))

    async def _ask(self, service: str, kind: Any) -> None:
        refused, detail = await self.coordinator.ask(service, kind)
        await self.handle(e.GuardAnswered(self.now(), service, refused, detail))

    async def _steps(self) -> None:
        while True:
            await asyncio.sleep(STEP_S)
            deadline = self.pop.next_deadline()
            if deadline is not None and deadline <= time.monotonic():
                await self.handle(e.Tick(self.now()))


def check_invariants(
    rib_log: list[RibEntry],
    start: dict[str, str],
    k: int,
    failing: set[str],
    budget: tuple[int, float] | None = None,
) -> None:
    """FLEET.md §3.11's checker, replayed over every PoP's RIB changes in time order from
    `start`: after each change (1) at least `k` PoPs hold the route (A or D); (2) at most B
    withdraws in any window of W seconds; (3) only PoPs whose health failed changed at all."""
    state = dict(start)
    withdraws: list[float] = []
    for entry in sorted(rib_log, key=lambda x: x.t):
        assert entry.pop in failing, f"{entry.pop} changed to {entry.what} without a failure"
        state[entry.pop] = entry.what
        holding = sum(1 for s in state.values() if s != "W")
        assert holding >= k, f"{holding} PoPs hold the route after {entry}, K is {k}"
        if entry.what == "W" and budget is not None:
            slots, window_s = budget
            withdraws.append(entry.t)
            recent = [t for t in withdraws if t > entry.t - window_s + 0.05]
            assert len(recent) <= slots, f"{len(recent)} withdraws within {window_s}s: {withdraws}"


async def wait_until(what: str, check: Any, timeout_s: float, state: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            now = f": {state()}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{now}")
        await asyncio.sleep(0.02)
