"""The executor: owns every task, turns inputs into core events, executes the core's commands.

Decisions live in `core.pop.Pop`; this module only does I/O: probes, ExaBGP's channel, netlink,
the state file, the service manager, reloads. Every effect that can fail is reported back to
the core as an event (an ack, Persisted, VipAdded) before it counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from anycast_agent import __version__
from anycast_agent.config import AgentConfig, load_config, pop_spec, reloadable
from anycast_agent.control.server import ControlServer
from anycast_agent.core import commands as c
from anycast_agent.core import events as e
from anycast_agent.core.lifecycle import refusals
from anycast_agent.core.pop import TICK_S, Pop
from anycast_agent.core.snapshot import About, Snapshot
from anycast_agent.core.spec import AddressMode, TargetSpec, route_keys
from anycast_agent.errors import ConfigError, RenderError, SpeakerError
from anycast_agent.fleet import ctl_copy
from anycast_agent.heap import settle_heap, share_the_gil
from anycast_agent.limits import fd_budget, prefer_oom_kill
from anycast_agent.model import NeighborState, ProbeResult, RefusalReason, RouteKey, WithdrawKind
from anycast_agent.netlink.addresses import Addresses
from anycast_agent.notify import Notifier
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.canary import canary_forever
from anycast_agent.probes.resolver import Resolver
from anycast_agent.probes.runner import Running, start_probe
from anycast_agent.speaker import Speaker, held_routes, learn
from anycast_agent.speaker.grammar import Ack, NotificationEvent, ShutdownEvent, StateEvent, render
from anycast_agent.state import LAST_GOOD, count_start, save_last_good
from anycast_agent.store import Store
from anycast_agent.writer import LockBusy, WriterLock, own, started_by_exabgp

if TYPE_CHECKING:  # the etcd client is imported by a run with `fleet:` only
    from anycast_agent.fleet.coordinator import Coordinator, FleetStats

log = logging.getLogger("anycast_agent")

# The heap is settled this long after start and each reload: once the probes of new targets
# have made what they keep and those of removed ones have ended (`heap.settle_heap`).
SETTLE_AFTER_S = 1.0
RESYNC_AFTER_SESSION_S = 1.0
EXIT_NO_ACKS = 3  # `run`'s exit code when ExaBGP does not acknowledge commands
EXIT_BUSY = 4  # another agent holds the writer lock and this copy was started by hand
FAULT_STALL_ENV = "ANYCAST_AGENT_FAULT_STALL_DECIDE_FILE"  # the watchdog drill (docs/deploy.md)
_ACKS = {Ack.DONE: e.AckResult.DONE}  # anything else ExaBGP answers is a refusal


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        speaker: Speaker,
        *,
        config_path: Path | None = None,
        config_text: bytes | None = None,
        fallback: bool = False,  # running the last-good config: the given one is invalid
        dry_run: bool = False,  # no state_dir writes, no VIP changes
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.speaker, self.dry_run = config, speaker, dry_run
        self.config_path, self.config_text, self.fallback = config_path, config_text, fallback
        self.clock, self.wall = clock, wall
        self.store = Store(config.state_dir)
        self.addresses = Addresses(config.addresses.interface)
        self.notifier = Notifier.from_env(os.environ)
        self.notifier.allow_periods(self.config.slowest_probe_s() + TICK_S)
        self.control: ControlServer | None = None
        self.pop = Pop(pop_spec(config), About(__version__, wall(), 0), self.now())
        self._wake = asyncio.Event()
        self._tickets = itertools.count(1)
        self._replies: dict[int, c.Refusal | None] = {}
        self._probes: dict[tuple[str, str], Running] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._factory: ProbeFactory | None = None
        self._lock: WriterLock | None = None
        self._session_up = asyncio.Event()  # a session came up: re-read ExaBGP's routes soon
        self.spawned = started_by_exabgp()  # the parent is ExaBGP: never exit over the lock
        self.fleet: Coordinator | None = None
        self._shown: tuple[Snapshot, FleetStats, Snapshot] | None = None  # see snapshot()

    def now(self) -> e.Instant:
        return e.Instant(self.clock(), self.wall())

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set, stdin closes or ExaBGP shuts down; returns the exit code."""
        loop = asyncio.get_running_loop()
        share_the_gil()
        resolver = Resolver(**self.config.resolver.model_dump())
        async with asyncio.TaskGroup() as tg, ProbeFactory(resolver) as factory:
            self._tg, self._factory = tg, factory
            # stdin is read from the start (ExaBGP must never block on us), but nothing is sent
            # and nothing is served before this process is the PoP's one writer.
            tasks = [
                tg.create_task(self.speaker.read_forever(), name="speaker:read"),
                tg.create_task(self._inbound(stop), name="speaker:events"),
                tg.create_task(self._closed(stop), name="speaker:closed"),
            ]
            code = await self._start(stop)
            # SIGHUP to the agent's own PID reloads (never to ExaBGP: it shuts down on SIGHUP).
            loop.add_signal_handler(
                signal.SIGHUP, lambda: tg.create_task(self.reload(), name="reload:sighup")
            )
            if code != 0 or stop.is_set():
                stop.set()
            elif await self._sync():
                loop.call_later(SETTLE_AFTER_S, settle_heap)
                jobs = {
                    "decide": self._decide_forever(),
                    "watchdog": self.notifier.watchdog_loop(lambda: self.pop.last_progress),
                    "vips": self._vips_forever(),
                }
                if not self.dry_run:
                    jobs["resync"] = self._resync_forever()
                if self.config.fleet is not None and not self.dry_run:
                    jobs["fleet"] = self._fleet()
                if self.config.canary:
                    report = lambda r: self._observe(e.CanaryObserved(self.now(), r))  # noqa: E731
                    jobs["canary"] = canary_forever(report)
                tasks += [tg.create_task(job, name=name) for name, job in jobs.items()]
            else:
                code = EXIT_NO_ACKS
                stop.set()
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
            for task in [*tasks, *self._probes.values()]:
                task.cancel()
        if self.control is not None:
            await self.control.stop()
        self.notifier.stopping()
        self.notifier.close()
        if self._lock is not None:
            self._lock.close()
        log.info("agent stopped (routes stay as they are in ExaBGP)")
        return code

    async def _start(self, stop: asyncio.Event) -> int:
        """Become the PoP's one writer, then read the state and serve the endpoint; the exit
        code when this process must not go on (0: go on)."""
        if not self.dry_run:  # a dry run writes nothing, so it takes no lock
            try:
                self._lock = await own(self.config.state_dir, stop, under_exabgp=self.spawned)
                if self._lock is None:  # stopped while waiting for it
                    return 0
            except LockBusy as exc:
                log.critical("%s", exc)
                return EXIT_BUSY
            except OSError as exc:  # an unwritable state_dir must not become a crash loop
                log.critical(
                    "cannot take the writer lock in %s (%s): running without it, so a second "
                    "agent on this state_dir would not be kept out",
                    self.config.state_dir,
                    exc.strerror or exc,
                )
            # Out of memory, the agent and its exec probes go before ExaBGP (it respawns us).
            problem = prefer_oom_kill()
            if problem:
                log.warning("cannot raise oom_score_adj: %s", problem)
        starts = 0 if self.dry_run else count_start(self.config.state_dir)
        intents, unreadable = self.store.load_or_unreadable()
        about = About(__version__, self.wall(), starts, self.fallback, *fd_budget(self.config))
        self.pop = Pop(
            pop_spec(self.config), about, self.now(), intents, state_unreadable=unreadable
        )
        if self.config.fleet is not None:  # the fleet's drains and ramps, as last seen
            copy = ctl_copy.load(self.config.state_dir)
            if isinstance(copy, str):
                log.error("fleet: %s: no ctl/ intents until etcd answers", copy)
            else:
                await self._handle(e.FleetCtlChanged(self.now(), *copy))
        if self.control is not None and not await self.control.serve():
            self.control = None
        return 0

    async def _sync(self) -> bool:
        """Learn the truth from ExaBGP: sessions, and the routes it holds (DESIGN §3.6)."""
        try:
            sessions, held = await learn(self.speaker)
        except SpeakerError as exc:
            log.critical("%s: exiting before sending anything", exc)
            return False
        await self._handle(e.Synced(self.now(), sessions, held, self._former()))
        if self.config.addresses.mode is AddressMode.CHECK:
            await self._list_vips()
        await self._handle(e.Tick(self.now()))  # held routes no longer configured go at once
        if self.config_text is not None and not self.fallback and not self.dry_run:
            save_last_good(self.config.state_dir, self.config_text)
        return True

    def _former(self) -> dict[RouteKey, str]:
        """With `fleet:`, the service each route belonged to in the last-good config (the
        previous run's), so routes dropped since then drain out through the guard."""
        if self.config.fleet is None:
            return {}
        try:
            spec = pop_spec(load_config(self.config.state_dir / LAST_GOOD))
        except (ConfigError, OSError):
            return {}
        return {k: name for name, keys in route_keys(spec).items() for k in keys}

    async def _closed(self, stop: asyncio.Event) -> None:
        await self.speaker.closed.wait()
        await self._handle(e.ChannelClosed(self.now()))
        log.info("stdin closed by ExaBGP: exiting")
        stop.set()

    async def _inbound(self, stop: asyncio.Event) -> None:
        while True:
            match await self.speaker.events.get():
                case StateEvent(neighbor=peer, state=state, reason=reason):
                    await self._handle(e.NeighborChanged(self.now(), peer, state, reason))
                    if state is NeighborState.ESTABLISHED:
                        self._session_up.set()
                case NotificationEvent(neighbor=peer, text=text):
                    log.warning("neighbor %s notification: %s", peer, text)
                case ShutdownEvent():
                    log.info("ExaBGP is shutting down: exiting")
                    stop.set()
                case item:
                    log.debug("ignored from ExaBGP: %r", item)

    async def _decide_forever(self) -> None:
        fault = os.environ.get(FAULT_STALL_ENV)
        while True:
            deadline = self.pop.next_deadline()
            wait = TICK_S if deadline is None else min(TICK_S, deadline - self.clock())
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            while fault and os.path.exists(fault):  # noqa: ASYNC110, ASYNC240 - fault drill only
                await asyncio.sleep(0.05)  # no decision, so no progress and no watchdog ping
            await self._handle(e.Tick(self.now()))

    async def _resync_forever(self) -> None:
        """Read ExaBGP's adj-rib-out again every resync_interval, and soon after a session
        came up: ExaBGP tells its API process nothing when it reloads its own config (R27)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.resync_interval):
                    await self._session_up.wait()
                    await asyncio.sleep(RESYNC_AFTER_SESSION_S)  # its re-sends go first
            self._session_up.clear()
            try:
                held = await held_routes(self.speaker)
            except SpeakerError as exc:
                log.warning("re-reading ExaBGP's routes failed, tried again later: %s", exc)
                continue
            await self._handle(e.RibRead(self.now(), held))

    async def _vips_forever(self) -> None:
        while True:  # the mode may change with a reload
            await asyncio.sleep(TICK_S)
            if self.config.addresses.mode is AddressMode.CHECK:
                await self._list_vips()

    async def _list_vips(self) -> None:
        await self._handle(e.VipsListed(self.now(), *await self.addresses.listing()))

    async def _handle(self, event: e.Event) -> None:
        await self._execute(self.pop.handle(event))
        self._poke()

    async def _execute(self, commands: list[c.Command]) -> None:
        for command in commands:
            match command:
                case c.Announce() | c.Withdraw():
                    await self._send(command)
                case c.AddVip(prefix=prefix):
                    error = "" if self.dry_run else await self.addresses.add_vip(prefix)
                    await self._handle(e.VipAdded(self.now(), prefix, error))
                case c.RemoveVip(prefix=prefix) if not self.dry_run:
                    await self.addresses.remove_vip(prefix)
                case c.RemoveVip():
                    pass
                case c.StartProbe(service=service, target=target):
                    self._start_probe(service, target)
                case c.StopProbe(service=service, target=name) if (service, name) in self._probes:
                    self._probes.pop((service, name)).cancel()
                case c.Persist(ticket=ticket, intents=intents):
                    error = "" if self.dry_run else self.store.save_or_error(intents)
                    await self._handle(e.Persisted(self.now(), ticket, error))
                case c.Reply(ticket=ticket, refusal=refusal):
                    self._replies[ticket] = refusal
                case c.StopProbe():
                    pass  # not running (a reload before the start)
                case c.Ready():
                    self.notifier.ready()
                case c.AskGuard(service=service, kind=kind):
                    assert self._tg is not None
                    self._tg.create_task(self._ask(service, kind), name=f"guard:{service}")
                case c.Publish(states=states) if self.fleet is not None:
                    self.fleet.publish(dict(states))
                case c.Publish():
                    pass  # no coordinator: nothing is published
                case c.Log(level=level, message=message):
                    log.log(level, "%s", message)
                case _:
                    assert_never(command)

    async def _send(self, command: c.RouteCommand) -> None:
        try:
            line = render(command, self.pop.allowed_prefixes())
        except RenderError as exc:  # config validation makes this unreachable; never send it
            log.error("%s", exc)
            await self._handle(e.CommandAcked(self.now(), command, e.AckResult.ERROR))
            return
        log.info("%s: %s", c.describe(command), command.cause)
        try:
            result = _ACKS.get(await self.speaker.send(line), e.AckResult.ERROR)
        except SpeakerError as exc:
            log.error("%s", exc)
            result = e.AckResult.TIMEOUT
        await self._handle(e.CommandAcked(self.now(), command, result))

    async def _fleet(self) -> None:
        """Coordinate through etcd; without a usable coordinator the fleet stays DEGRADED
        (no withdraw granted), never standalone: that would drop the guard on a bad file."""
        from anycast_agent.fleet.setup import coordinator_for  # noqa: PLC0415 - see TYPE_CHECKING

        try:
            self.fleet = coordinator_for(self.config, self._handle, self.now)
        except ConfigError as exc:
            log.critical("fleet: %s: staying DEGRADED, no withdraw is granted", exc)
            return
        self.fleet.publish(self.pop.fleet.publishing)
        try:
            await self.fleet.run()
        finally:
            await self.fleet.client.close()

    async def _ask(self, service: str, kind: WithdrawKind) -> None:
        answer: tuple[RefusalReason | None, str] = (RefusalReason.DEGRADED, "no coordinator")
        if self.fleet is not None:
            answer = await self.fleet.ask(service, kind)
        await self._handle(e.GuardAnswered(self.now(), service, *answer))

    def _start_probe(self, service: str, target: TargetSpec) -> None:
        assert self._tg is not None and self._factory is not None
        reports = _TargetReports(self, service, target.name)
        self._probes[service, target.name] = start_probe(
            self._factory,
            target,
            f"{service}/{target.name}",
            self._tg,
            on_result=reports.result,
            on_skip=reports.skip,
        )

    def _observe(self, event: e.ProbeObserved | e.ProbeSkipped | e.CanaryObserved) -> None:
        """A probe's report, on the probe's own path: the core only ever logs in answer."""
        for command in self.pop.handle(event):
            assert isinstance(command, c.Log), command
            log.log(command.level, "%s", command.message)
        self._poke()

    def _poke(self) -> None:
        """Wake the decision loop if the core wants a step now."""
        deadline = self.pop.next_deadline()
        if deadline is not None and deadline <= self.clock():
            self._wake.set()

    # -- the control endpoint's Controller -----------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The core's snapshot with the coordinator's figures: the same object until either
        changes, so the control endpoint renders it once however many read it."""
        snap = self.pop.snapshot()
        if self.fleet is None:
            return snap
        stats = self.fleet.stats()
        shown = self._shown
        if shown is None or shown[0] is not snap or shown[1] != stats:
            full = replace(
                snap,
                fleet_slots_in_use=stats.slots_in_use,
                fleet_slots=stats.slots,
                fleet_last_contact=stats.last_ok,
            )
            shown = self._shown = (snap, stats, full)
        return shown[2]

    async def submit(self, request: e.OperatorRequest) -> c.Refusal | None:
        """Hand an operator request to the core; its answer once it has one (a Persist the
        core asks for in between is executed, and answered, first)."""
        ticket = next(self._tickets)
        await self._handle(e.IntentSubmitted(self.now(), ticket, request))
        return self._replies.pop(ticket)

    async def reload(self, allow_withdraw: bool = False) -> list[str]:
        """Validate the config file again and apply it as a diff; errors leave all unchanged.
        `allow_withdraw` confirms removing routes when more than half would go."""
        if self.config_path is None:
            return ["this agent was started without a config file path"]
        new = reloadable(self.config_path, self.config)
        names = [] if isinstance(new, list) else [s.name for s in new.services]
        problems = new if isinstance(new, list) else refusals(self.pop.intents, names)
        if problems or isinstance(new, list):
            log.error("reload refused, keeping the running config: %s", "; ".join(problems))
            return problems
        if new.addresses.interface != self.config.addresses.interface:
            self.addresses = Addresses(new.addresses.interface)
        self.config, self.fallback = new, False
        self.config_text = self.config_path.read_bytes()
        await self._handle(e.ConfigSwapped(self.now(), pop_spec(new), allow_withdraw))
        if not self.dry_run:
            save_last_good(new.state_dir, self.config_text)
        self.notifier.allow_periods(self.config.slowest_probe_s() + TICK_S)
        log.info("reloaded %s: %d services", self.config_path, len(new.services))
        asyncio.get_running_loop().call_later(SETTLE_AFTER_S, settle_heap)
        return []


class _TargetReports:
    """One target's probe reports into the core: one small object per target, lighter than
    the two closures (and their cells) it replaces."""

    __slots__ = ("_agent", "_service", "_target")

    def __init__(self, agent: Agent, service: str, target: str) -> None:
        self._agent, self._service, self._target = agent, service, target

    def result(self, result: ProbeResult) -> None:
        agent = self._agent
        agent._observe(e.ProbeObserved(agent.now(), self._service, self._target, result))

    def skip(self, slots: int) -> None:
        agent = self._agent
        agent._observe(e.ProbeSkipped(agent.now(), self._service, self._target, slots))
