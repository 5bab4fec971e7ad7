"""The one imperative shell: owns every task, feeds probes to the core, sends its commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from anycast_agent.config import AgentConfig, Service, Target
from anycast_agent.core.commands import Announce, Command
from anycast_agent.core.health import Health, observe
from anycast_agent.core.policy import Decision, ServiceStatus, decide, desired_routes
from anycast_agent.core.rib import Rib
from anycast_agent.errors import RenderError, SpeakerError
from anycast_agent.model import ProbeResult, TargetState
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.schedule import run_schedule
from anycast_agent.speaker.grammar import (
    SHOW_ADJ_RIB_OUT,
    SHOW_NEIGHBORS,
    Ack,
    Inbound,
    NeighborState,
    NotificationEvent,
    ShutdownEvent,
    StateEvent,
    parse_adj_rib_out,
    parse_neighbor_summary,
    render,
)
from anycast_agent.state import count_start, save_last_good

log = logging.getLogger("anycast_agent")

# How long a route ExaBGP refused waits before it is sent again.
REFUSED_RETRY_S = 30.0
# Exit codes of `run` besides 0 and 2 (invalid config).
EXIT_NO_ACKS = 3


class Speaker(Protocol):
    """What the agent needs from the ExaBGP channel (the real one, or the dry-run printer)."""

    closed: asyncio.Event
    events: asyncio.Queue[Inbound]

    async def read_forever(self) -> None: ...
    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack: ...
    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]: ...


@dataclass
class TargetRuntime:
    service: str
    target: Target
    rise: int
    fall: int
    interval_s: float
    timeout_s: float
    health: Health = field(default_factory=Health)
    last: ProbeResult | None = None

    @property
    def label(self) -> str:
        return f"{self.service}/{self.target.name}"


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        speaker: Speaker,
        *,
        config_text: bytes | None = None,
        fallback: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.speaker = speaker
        self.config_text = config_text
        self.fallback = fallback  # running the last-good config because the given one is invalid
        self.clock = clock
        self.rib = Rib()
        self.neighbors: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}
        self.targets: dict[str, list[TargetRuntime]] = {
            svc.name: [self._runtime(svc, t) for t in svc.targets] for svc in config.services
        }
        self.starts = 0
        self._dirty = asyncio.Event()

    def _runtime(self, svc: Service, t: Target) -> TargetRuntime:
        c = self.config
        return TargetRuntime(svc.name, t, c.rise(t), c.fall(t), c.interval_s(t), c.timeout_s(t))

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set, stdin closes or ExaBGP shuts down; returns the exit code."""
        self.starts = count_start(self.config.state_dir)
        tasks: list[asyncio.Task[None]] = []
        code = 0
        async with asyncio.TaskGroup() as tg, ProbeFactory() as probes:
            tasks.append(tg.create_task(self.speaker.read_forever(), name="speaker:read"))
            tasks.append(tg.create_task(self._events(stop), name="speaker:events"))
            tasks.append(tg.create_task(self._closed(stop), name="speaker:closed"))
            if await self._sync():
                for runtimes in self.targets.values():
                    for rt in runtimes:
                        probe = probes.build(rt.target.check, rt.timeout_s)
                        tasks.append(
                            tg.create_task(
                                run_schedule(probe, rt.interval_s, self._on_result(rt)),
                                name=f"probe:{rt.label}",
                            )
                        )
                tasks.append(tg.create_task(self._decide_forever(), name="decide"))
            else:
                code = EXIT_NO_ACKS
                stop.set()
            await stop.wait()
            for task in tasks:
                task.cancel()
        log.info("agent stopped (routes stay as they are in ExaBGP)")
        return code

    async def _closed(self, stop: asyncio.Event) -> None:
        await self.speaker.closed.wait()
        log.info("stdin closed by ExaBGP: exiting")
        stop.set()

    async def _events(self, stop: asyncio.Event) -> None:
        while True:
            item = await self.speaker.events.get()
            match item:
                case StateEvent(neighbor=peer, state=state, reason=reason):
                    log.info(
                        "neighbor %s %s%s", peer, state.value, f" ({reason})" if reason else ""
                    )
                    self.neighbors[peer] = (
                        "established" if state is NeighborState.UP else state.value
                    )
                    if state is NeighborState.UP:
                        self.rib.resend_neighbor(peer)
                        self._dirty.set()
                case NotificationEvent(neighbor=peer, text=text):
                    log.warning("neighbor %s notification: %s", peer, text)
                case ShutdownEvent():
                    log.info("ExaBGP is shutting down: exiting")
                    stop.set()
                case _:
                    log.debug("ignored from ExaBGP: %r", item)

    async def _sync(self) -> bool:
        """Learn the truth from ExaBGP: sessions, and the routes it holds (DESIGN §3.6)."""
        try:
            summary = await self.speaker.show(SHOW_NEIGHBORS)
        except SpeakerError as exc:
            log.critical(
                "ExaBGP does not acknowledge commands (%s): the agent needs "
                "exabgp.api.ack=true (ExaBGP's default); exiting before sending anything",
                exc,
            )
            return False
        self.neighbors = {str(n.address): "down" for n in self.config.bgp.neighbors}
        self.neighbors.update(parse_neighbor_summary(summary))
        try:
            held = parse_adj_rib_out(await self.speaker.show(SHOW_ADJ_RIB_OUT))
        except SpeakerError as exc:
            log.critical("cannot read ExaBGP's adj-rib-out (%s): exiting", exc)
            return False
        self.rib.held = held
        log.info(
            "start %d: ExaBGP holds %d routes; sessions: %s%s",
            self.starts,
            len(held),
            ", ".join(f"{a} {s}" for a, s in sorted(self.neighbors.items())) or "none",
            " — RUNNING THE LAST-GOOD CONFIG" if self.fallback else "",
        )
        await self._apply()  # withdraws held routes of prefixes no longer configured, at once
        if self.config_text is not None and not self.fallback:
            save_last_good(self.config.state_dir, self.config_text)
        return True

    def _on_result(self, rt: TargetRuntime) -> Callable[[ProbeResult], None]:
        def on_result(result: ProbeResult) -> None:
            before = rt.health.state
            rt.last = result
            rt.health = observe(rt.health, result.ok, rise=rt.rise, fall=rt.fall)
            if rt.health.state is not before:
                log.info(
                    "target %s %s -> %s%s",
                    rt.label,
                    before.value,
                    rt.health.state.value,
                    f": {result.reason}" if result.reason else "",
                )
                self._dirty.set()

        return on_result

    async def _decide_forever(self) -> None:
        while True:
            retry_in = self._next_retry_in()
            if retry_in is None:
                await self._dirty.wait()
            else:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry_in):
                        await self._dirty.wait()
            self._dirty.clear()
            await self._apply()

    def _next_retry_in(self) -> float | None:
        if not self.rib.refused_until:
            return None
        return max(0.0, min(self.rib.refused_until.values()) - self.clock())

    def _decide(self) -> dict[str, Decision]:
        decisions: dict[str, Decision] = {}
        for svc in self.config.services:
            runtimes = self.targets[svc.name]
            decision = decide(svc, [rt.health for rt in runtimes])
            before = self.decisions.get(svc.name)
            changed = (
                before.status is not decision.status
                if before
                else decision.status is not ServiceStatus.UNKNOWN
            )
            if changed:
                lost = [
                    f"{rt.target.name} {rt.health.state.value}"
                    + (f" ({rt.last.reason})" if rt.last and rt.last.reason else "")
                    for rt in runtimes
                    if rt.health.state not in (TargetState.HEALTHY, TargetState.SUSPICIOUS)
                ]
                log.info(
                    "service %s %s -> %s: %s%s",
                    svc.name,
                    before.status.value if before else "unknown",
                    decision.status.value,
                    decision.reason,
                    f"; {', '.join(lost)}"
                    if lost and decision.status is not ServiceStatus.UP
                    else "",
                )
            decisions[svc.name] = decision
        self.decisions = decisions
        return decisions

    async def _apply(self) -> None:
        decisions = self._decide()
        wanted = desired_routes(self.config, decisions)
        causes = {
            str(p): f"service {svc.name} {decisions[svc.name].status.value}: "
            f"{decisions[svc.name].reason}"
            for svc in self.config.services
            for p in svc.prefixes
        }
        configured = {str(p) for svc in self.config.services for p in svc.prefixes}
        for command in self.rib.plan(wanted, configured, self.clock(), causes):
            await self._send(command)

    async def _send(self, command: Command) -> None:
        try:
            line = render(command)
        except RenderError as exc:  # config validation makes this unreachable; never send it
            log.error("%s", exc)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)
            return
        verb = "announce" if isinstance(command, Announce) else "withdraw"
        detail = f" med {command.attrs.med}" if isinstance(command, Announce) else ""
        log.info(
            "%s %s%s to %s: %s",
            verb,
            command.key.prefix,
            detail,
            command.key.neighbor,
            command.cause,
        )
        try:
            ack = await self.speaker.send(line)
        except SpeakerError as exc:
            log.error("%s", exc)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)
            return
        if ack is Ack.DONE:
            self.rib.accepted(command)
        else:
            log.error("ExaBGP answered %r to %r", ack.value, line)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)


class DryRunSpeaker:
    """Prints each command instead of sending it, and answers `done` (`run --dry-run`)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.closed = asyncio.Event()
        self.events: asyncio.Queue[Inbound] = asyncio.Queue()
        self._write = write

    async def read_forever(self) -> None:
        await asyncio.Event().wait()

    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack:
        self._write(line)
        return Ack.DONE

    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]:
        return []


def config_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
