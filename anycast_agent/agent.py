"""The one imperative shell: owns every task, feeds probes to the core, sends its commands."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from anycast_agent import __version__
from anycast_agent.config import AddressMode, AgentConfig, Service, Target, load_config
from anycast_agent.control.server import ControlServer
from anycast_agent.core.commands import Announce, Command
from anycast_agent.core.health import Health, observe
from anycast_agent.core.intents import POP, Drain, Intents, MedOverride, RampAction
from anycast_agent.core.policy import Decision, decide
from anycast_agent.core.rib import Rib
from anycast_agent.core.snapshot import RouteSnapshot, ServiceSnapshot, Snapshot, TargetSnapshot
from anycast_agent.core.traffic import Memory, Outcome, Phase, adopt, evaluate
from anycast_agent.errors import ConfigError, Conflict, RenderError, SpeakerError, UnknownService
from anycast_agent.model import Family, ProbeResult, RouteAttrs, RouteKey, TargetState
from anycast_agent.netlink.addresses import (
    AddressError,
    Addresses,
    InterfaceNotFound,
    vip_of,
    withheld,
)
from anycast_agent.notify import Notifier
from anycast_agent.probes import CallbackProbe, Probe, ProbeFactory, is_callback_probe
from anycast_agent.probes.schedule import run_callback_schedule, run_schedule
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
from anycast_agent.store import Store, Unreadable

log = logging.getLogger("anycast_agent")

# How long a route ExaBGP refused waits before it is sent again.
REFUSED_RETRY_S = 30.0
# The decision loop ticks at least this often, so progress (the watchdog's food) is visible.
# Everything else wakes it at once: a target changing state, an operator intent, a session
# coming up, a timer an outcome asked for (`wake_at`), a refused route's retry.
TICK_S = 0.25
# Each tick re-evaluates a slice of the services (as well as those with news), so that every
# service is looked at again at least this often (load changes, the safety net) without one
# step evaluating them all: at 200 services that stalled the probe loop ~15 ms a step.
SWEEP_S = 1.0
SETTLE_AFTER_RELOAD_S = 1.0
# Exit codes of `run` besides 0 and 2 (invalid config).
EXIT_NO_ACKS = 3
# Phases that end a ramp, and with it any operator hold on it.
_RAMP_ENDED = frozenset({Phase.DOWN, Phase.DRAINED, Phase.SUPPRESSED})
# Fault drill (docs/deploy.md): while this file exists the decision step stalls.
FAULT_STALL_ENV = "ANYCAST_AGENT_FAULT_STALL_DECIDE_FILE"


class Speaker(Protocol):
    """What the agent needs from the ExaBGP channel (the real one, or the dry-run printer)."""

    closed: asyncio.Event
    events: asyncio.Queue[Inbound]
    sent: int
    acked: dict[Ack | None, int]

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
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    transitions: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"{self.service}/{self.target.name}"

    def same_check(self, other: TargetRuntime) -> bool:
        return (self.target, self.rise, self.fall, self.interval_s, self.timeout_s) == (
            other.target,
            other.rise,
            other.fall,
            other.interval_s,
            other.timeout_s,
        )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        speaker: Speaker,
        *,
        config_path: Path | None = None,
        config_text: bytes | None = None,
        fallback: bool = False,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.speaker = speaker
        self.config_path = config_path
        self.config_text = config_text
        self.fallback = fallback  # running the last-good config because the given one is invalid
        self.dry_run = dry_run  # no state_dir writes, no VIP changes
        self.clock = clock
        self.wall = wall
        self.rib = Rib()
        self.neighbors: dict[str, str] = {}
        self.targets: dict[str, list[TargetRuntime]] = {
            svc.name: [self._runtime(svc, t) for t in svc.targets] for svc in config.services
        }
        self.memory: dict[str, Memory] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.decisions: dict[str, Decision] = {}
        self.store = Store(config.state_dir)
        self.intents = Intents()
        self.state_unreadable = False
        self.starts = 0
        self.ready = False
        self.started_at = wall()
        self.last_decide = clock()
        self.last_probe = clock()
        self.notifier = Notifier.from_env(os.environ, stall_after_s=self._stall_after_s())
        self.addresses = Addresses(config.addresses.interface)
        self.withheld: set[str] = set()
        self._dirty = asyncio.Event()
        # Services whose targets changed state since the last decision step; None: all of them.
        self._stale: set[str] | None = None
        self._next_sweep = 0.0
        self._sweep_at = 0
        self._allowed_keys: tuple[AgentConfig, set[RouteKey]] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._probes: ProbeFactory | None = None
        self._step_lock = asyncio.Lock()
        self.control: ControlServer | None = None

    def _stall_after_s(self) -> float | None:
        """How stale progress may get before the watchdog pings stop: never below the longest
        probe period, so a slow but healthy probe schedule is not mistaken for a hang."""
        watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 1e6
        if watchdog_s <= 0:
            return None
        longest = (
            max(
                (self.config.interval_s(t) + self.config.timeout_s(t))
                for svc in self.config.services
                for t in svc.targets
            )
            if any(svc.targets for svc in self.config.services)
            else 0.0
        )
        return max(watchdog_s, longest + TICK_S)

    def _runtime(self, svc: Service, t: Target) -> TargetRuntime:
        c = self.config
        return TargetRuntime(svc.name, t, c.rise(t), c.fall(t), c.interval_s(t), c.timeout_s(t))

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set, stdin closes or ExaBGP shuts down; returns the exit code."""
        self.starts = 0 if self.dry_run else count_start(self.config.state_dir)
        self._load_intents()
        await self._start_control()
        tasks: list[asyncio.Task[None]] = []
        code = 0
        async with asyncio.TaskGroup() as tg, ProbeFactory() as probes:
            self._tg, self._probes = tg, probes
            tasks.append(tg.create_task(self.speaker.read_forever(), name="speaker:read"))
            tasks.append(tg.create_task(self._events(stop), name="speaker:events"))
            tasks.append(tg.create_task(self._closed(stop), name="speaker:closed"))
            if await self._sync():
                for runtimes in self.targets.values():
                    for rt in runtimes:
                        if rt.task is None:  # a reload during the sync may have started it
                            self._start_probe(rt)
                settle_heap()
                tasks.append(tg.create_task(self._decide_forever(), name="decide"))
                tasks.append(
                    tg.create_task(self.notifier.watchdog_loop(self.progress), name="watchdog")
                )
            else:
                code = EXIT_NO_ACKS
                stop.set()
            await stop.wait()
            for task in tasks:
                task.cancel()
            for runtimes in self.targets.values():
                for rt in runtimes:
                    if rt.task is not None:
                        rt.task.cancel()
        self._tg = self._probes = None
        if self.control is not None:
            await self.control.stop()
        self.notifier.stopping()
        self.notifier.close()
        log.info("agent stopped (routes stay as they are in ExaBGP)")
        return code

    async def _start_control(self) -> None:
        """Serve status, metrics and operator intents; a failure here never stops the agent."""
        if self.control is None:
            return
        try:
            await self.control.start()
        except OSError as exc:
            log.critical(
                "control endpoint %s unavailable (%s): running without status, metrics and "
                "operator control",
                self.config.control.listen,
                exc.strerror or exc,
            )
            self.control = None
            return
        log.info("control endpoint on %s", self.control.describe())

    def _start_probe(self, rt: TargetRuntime) -> None:
        assert self._tg is not None and self._probes is not None
        rt.task = self._tg.create_task(self._probe_forever(rt), name=f"probe:{rt.label}")

    async def _probe_forever(self, rt: TargetRuntime) -> None:
        assert self._probes is not None
        probes = self._probes
        try:
            built = probes.build(rt.target.check, rt.timeout_s)
        except Exception as exc:  # a check the config let through but no probe can run
            log.exception("target %s cannot be probed: it counts as failing", rt.label)
            built = _Broken(f"cannot probe: {exc}")
        phase_s = random.uniform(0, rt.interval_s * 0.999)
        try:
            if is_callback_probe(built):  # driven by the engine's timers: nothing per check
                await run_callback_schedule(
                    probes.engine,
                    _GuardedCallback(built, rt.label),
                    rt.interval_s,
                    self._on_result(rt),
                    on_skip=self._on_skip(rt),
                    phase_s=phase_s,
                )
            else:
                await run_schedule(
                    _Guarded(built, rt.label),
                    rt.interval_s,
                    self._on_result(rt),
                    on_skip=self._on_skip(rt),
                    phase_s=phase_s,
                )
        finally:
            probes.release(built)

    def _load_intents(self) -> None:
        try:
            self.intents = self.store.load()
        except Unreadable as exc:
            log.critical("%s: every service starts drained (state unreadable)", exc)
            self.state_unreadable = True
            self.intents = Intents(
                drains={POP: Drain(POP, "state unreadable", "anycast-agent", since=self.wall())}
            )
        if self.intents.drains or self.intents.meds:
            log.info(
                "operator intents: %s",
                "; ".join(
                    [f"drain {d.service} ({d.reason})" for d in self.intents.drains.values()]
                    + [f"med {m.service}={m.med}" for m in self.intents.meds.values()]
                ),
            )

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
                        self._wake()
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
        now = self.clock()
        for svc in self.config.services:
            self.memory[svc.name] = adopt(
                svc, self.config.policy(svc), self.config.neighbors_of(svc), held, now
            )
        adopted = [s for s, m in self.memory.items() if m.was_up]
        log.info(
            "start %d: ExaBGP holds %d routes (adopted: %s); sessions: %s%s",
            self.starts,
            len(held),
            ", ".join(adopted) or "none",
            ", ".join(f"{a} {s}" for a, s in sorted(self.neighbors.items())) or "none",
            " — RUNNING THE LAST-GOOD CONFIG" if self.fallback else "",
        )
        await self._apply()  # withdraws held routes of prefixes no longer configured, at once
        if self.config_text is not None and not self.fallback and not self.dry_run:
            save_last_good(self.config.state_dir, self.config_text)
        return True

    # -- probes ------------------------------------------------------------------------------

    def _on_result(self, rt: TargetRuntime) -> Callable[[ProbeResult], None]:
        def on_result(result: ProbeResult) -> None:
            self.last_probe = self.clock()
            before = rt.health.state
            rt.last = result
            if result.ok:
                rt.ok += 1
            else:
                rt.failed += 1
            rt.health = observe(rt.health, result.ok, rise=rt.rise, fall=rt.fall)
            if rt.health.state is not before:
                rt.transitions += 1
                log.info(
                    "target %s %s -> %s%s",
                    rt.label,
                    before.value,
                    rt.health.state.value,
                    f": {result.reason}" if result.reason else "",
                )
                self._wake(rt.service)

        return on_result

    def _on_skip(self, rt: TargetRuntime) -> Callable[[int], None]:
        def on_skip(count: int) -> None:
            rt.skipped += count
            log.warning(
                "target %s: probe overran its interval, %d slot(s) skipped", rt.label, count
            )

        return on_skip

    # -- decisions ----------------------------------------------------------------------------

    async def _decide_forever(self) -> None:
        fault = os.environ.get(FAULT_STALL_ENV)
        while True:
            wake = min(
                (o.wake_at for o in self.outcomes.values() if o.wake_at is not None),
                default=None,
            )
            retry = self.rib.next_retry(self.clock())
            deadline = min(w for w in (wake, retry, self.clock() + TICK_S) if w is not None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - self.clock())):
                    await self._dirty.wait()
            self._dirty.clear()
            while fault and os.path.exists(fault):  # noqa: ASYNC110, ASYNC240 - fault drill only
                await asyncio.sleep(0.05)  # no decision, so no progress and no watchdog ping
            await self._step()

    async def _step(self) -> None:
        """The decide loop's step: the services with news (read under the lock, so a reload or
        an intent that asked for every service is never overtaken), those whose timer is due,
        and the next slice of the sweep."""
        async with self._step_lock:
            now = self.clock()
            only = self._stale
            self._stale = set()
            if only is not None:
                only |= {
                    s
                    for s, o in self.outcomes.items()
                    if o.wake_at is not None and o.wake_at <= now
                }
                if now >= self._next_sweep:
                    self._next_sweep = now + TICK_S
                    only |= self._sweep_slice()
            await self._apply_locked(only)

    def _sweep_slice(self) -> set[str]:
        """The next TICK_S / SWEEP_S of the services, round robin."""
        names = [svc.name for svc in self.config.services]
        if not names:
            return set()
        size = math.ceil(len(names) * TICK_S / SWEEP_S)
        start = self._sweep_at % len(names)
        self._sweep_at = start + size
        return set((names + names)[start : start + size])

    def _wake(self, service: str | None = None) -> None:
        """Ask for a decision step now: for `service` only (its targets changed state), or for
        every service (intents, sessions, config)."""
        if service is None:
            self._stale = None
        elif self._stale is not None:
            self._stale.add(service)
        self._dirty.set()

    async def _apply(self) -> None:
        """A decision step over every service. A reload swaps the config between decision
        steps, never in the middle of one."""
        async with self._step_lock:
            await self._apply_locked()

    def _allowed(self) -> set[RouteKey]:
        """Every (neighbor, prefix) the config maps a service to, family-matched."""
        if self._allowed_keys is None or self._allowed_keys[0] is not self.config:
            keys = {
                RouteKey.of(n.address, p)
                for svc in self.config.services
                for n in self.config.neighbors_of(svc)
                for p in svc.prefixes
                if Family.of(p) in n.families
            }
            self._allowed_keys = (self.config, keys)
        return self._allowed_keys[1]

    async def _apply_locked(self, only: set[str] | None = None) -> None:
        """One decision step. `only`: evaluate just these services (the others keep their last
        outcome): a target's fall count completing must not wait for 200 other services to be
        evaluated first (decision → upstream p99 was 62 ms at 2000 targets with a full pass)."""
        now, wall = self.clock(), self.wall()
        if only is None:
            self._stale = set()  # every service is evaluated now
        self.intents = self._expire(wall)
        wanted: dict[RouteKey, RouteAttrs | None] = {}
        causes: dict[str, str] = {}
        for svc in self.config.services:
            outcome = self.outcomes.get(svc.name)
            if outcome is None or only is None or svc.name in only:
                outcome = self._evaluate(svc, now, wall)
            wanted.update(outcome.wanted)
            for p in svc.prefixes:
                causes[str(p)] = f"service {svc.name} {outcome.phase.value}: {outcome.reason}"
        await self._gate_vips(wanted, causes)
        allowed = self._allowed()
        for command in self.rib.plan(wanted, allowed, now, causes):
            if await self._vip_before(command):
                await self._send(command)
            await self._vip_after(command)
        self.last_decide = self.clock()
        if not self.ready and all(o.phase is not Phase.UNKNOWN for o in self.outcomes.values()):
            self.ready = True
            log.info("ready: every service decided")
            self.notifier.ready()

    def _evaluate(self, svc: Service, now: float, wall: float) -> Outcome:
        """Decide one service from its targets, intents and memory; its new outcome."""
        runtimes = self.targets[svc.name]
        decision = decide(svc, [rt.health for rt in runtimes])
        lost = sum(
            rt.health.state in (TargetState.UNHEALTHY, TargetState.RECOVERING) for rt in runtimes
        )
        loads = [
            rt.last.load
            for rt in runtimes
            if rt.health.counts_healthy and rt.last is not None and rt.last.load is not None
        ]
        load = sum(loads) / len(loads) if loads else None
        mem = self.memory.get(svc.name, Memory())
        mem = replace(mem, ramp_held=svc.name in self.intents.ramp_holds)
        mem, outcome = evaluate(
            svc,
            self.config.policy(svc),
            self.config.neighbors_of(svc),
            mem,
            decision,
            lost,
            load,
            self.intents,
            now,
            wall,
            self.rib.held.keys(),
        )
        self.memory[svc.name] = mem
        if svc.name in self.intents.ramp_holds and outcome.phase in _RAMP_ENDED:
            log.info("ramp hold of %s cleared: the service is %s", svc.name, outcome.phase)
            holds = self.intents.ramp_holds - {svc.name}
            self._save(replace(self.intents, ramp_holds=holds))
        self._log_change(svc, self.outcomes.get(svc.name), outcome, runtimes)
        self.outcomes[svc.name] = outcome
        self.decisions[svc.name] = decision
        return outcome

    async def _gate_vips(
        self, wanted: dict[RouteKey, RouteAttrs | None], causes: dict[str, str]
    ) -> None:
        """`addresses.mode: check`: a prefix whose address is missing is treated as down."""
        if self.config.addresses.mode is not AddressMode.CHECK:
            return
        prefixes = [p for svc in self.config.services for p in svc.prefixes]
        try:
            missing = {str(p) for p in withheld(prefixes, await self.addresses.present())}
        except (InterfaceNotFound, AddressError, OSError) as exc:
            log.error("VIP check: %s: every prefix is withheld", exc)
            missing = {str(p) for p in prefixes}
        if missing != self.withheld:
            log.warning(
                "VIP check on %s: withholding %s",
                self.config.addresses.interface,
                ", ".join(sorted(missing)) or "nothing",
            )
            self.withheld = missing
        for key in wanted:
            if key.prefix in missing:
                wanted[key] = None
                causes[key.prefix] = (
                    f"address of {key.prefix} missing on {self.config.addresses.interface}"
                )

    async def _vip_before(self, command: Command) -> bool:
        """`manage`: the address goes up before its route; False (no announce) if it cannot."""
        if self.config.addresses.mode is not AddressMode.MANAGE or not isinstance(
            command, Announce
        ):
            return True
        if self.dry_run:
            return True
        try:
            if await self.addresses.add(vip_of(command.key.prefix)):
                log.info("VIP %s added on %s", command.key.prefix, self.addresses.interface)
        except (InterfaceNotFound, AddressError, OSError) as exc:
            log.error("%s: not announcing %s", exc, command.key.prefix)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)
            return False
        return True

    async def _vip_after(self, command: Command) -> None:
        a = self.config.addresses
        if a.mode is not AddressMode.MANAGE or not a.remove_on_withdraw or self.dry_run:
            return
        if isinstance(command, Announce) or any(
            k.prefix == command.key.prefix for k in self.rib.held
        ):
            return  # still announced to another neighbor
        try:
            if await self.addresses.remove(vip_of(command.key.prefix)):
                log.info("VIP %s removed from %s", command.key.prefix, a.interface)
        except (InterfaceNotFound, AddressError, OSError) as exc:
            log.error("%s", exc)

    def _expire(self, wall: float) -> Intents:
        intents = self.intents.expire(wall)
        if intents is not self.intents:
            log.info("operator intents expired; now: %s", _describe(intents))
            self._save(intents)
        return intents

    def _log_change(
        self, svc: Service, before: Outcome | None, after: Outcome, runtimes: list[TargetRuntime]
    ) -> None:
        if before is None and after.phase is Phase.UNKNOWN:
            return
        if before is not None and (before.phase, before.stage_percent, before.med) == (
            after.phase,
            after.stage_percent,
            after.med,
        ):
            return
        lost = [
            f"{rt.target.name} {rt.health.state.value}"
            + (f" ({rt.last.reason})" if rt.last and rt.last.reason else "")
            for rt in runtimes
            if not rt.health.counts_healthy
        ]
        log.info(
            "service %s %s -> %s: %s%s",
            svc.name,
            before.phase.value if before else "unknown",
            after.phase.value,
            after.reason,
            f"; {', '.join(lost)}" if lost and after.phase is not Phase.UP else "",
        )

    async def _send(self, command: Command) -> None:
        try:
            line = render(command)
        except RenderError as exc:  # config validation makes this unreachable; never send it
            log.error("%s", exc)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)
            return
        if isinstance(command, Announce):
            a = command.attrs
            detail = f" med {a.med}" + (f" as-path {list(a.as_path)}" if a.as_path else "")
            if a.communities:
                detail += f" community {list(a.communities)}"
            verb = "announce"
        else:
            verb, detail = "withdraw", ""
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
            self.rib.unanswered(command, self.clock() + REFUSED_RETRY_S)
            return
        if ack is Ack.DONE:
            self.rib.accepted(command)
        else:
            log.error("ExaBGP answered %r to %r", ack.value, line)
            self.rib.refused(command, self.clock() + REFUSED_RETRY_S)

    # -- operator intents (the control endpoint's Controller) ---------------------------------

    def _service(self, name: str) -> Service:
        svc = next((s for s in self.config.services if s.name == name), None)
        if svc is None:
            raise UnknownService(name)
        return svc

    def _save(self, intents: Intents) -> None:
        self.intents = intents
        try:
            self.store.save(intents)
        except OSError as exc:
            log.error("cannot persist operator intents in %s: %s", self.store.path, exc)
        self._wake()

    async def drain(
        self, service: str | None, *, reason: str, author: str, expires_in_s: float | None
    ) -> None:
        key = POP if service is None else self._service(service).name
        wall = self.wall()
        expires = None if expires_in_s is None else wall + expires_in_s
        existing = self.intents.drains.get(key)
        since = existing.since if existing is not None else wall  # a re-drain keeps its grace
        drain = Drain(key, reason, author, since, expires)
        log.info("drain %s by %s: %s", "PoP" if key == POP else key, author, reason)
        self._save(replace(self.intents, drains={**self.intents.drains, key: drain}))

    async def undrain(self, service: str | None, *, author: str) -> None:
        key = POP if service is None else self._service(service).name
        if key not in self.intents.drains:
            raise Conflict(f"{'the PoP' if key == POP else repr(key)} is not drained")
        log.info("undrain %s by %s", "PoP" if key == POP else key, author)
        if key == POP:
            self.state_unreadable = False
        drains = {k: d for k, d in self.intents.drains.items() if k != key}
        self._save(replace(self.intents, drains=drains))

    async def set_med(
        self, service: str, med: int, *, reason: str, author: str, expires_in_s: float | None
    ) -> None:
        name = self._service(service).name
        wall = self.wall()
        expires = None if expires_in_s is None else wall + expires_in_s
        override = MedOverride(name, med, reason, author, wall, expires)
        log.info("MED override %s=%d by %s: %s", name, med, author, reason)
        self._save(replace(self.intents, meds={**self.intents.meds, name: override}))

    async def clear_med(self, service: str, *, author: str) -> None:
        name = self._service(service).name
        if name not in self.intents.meds:
            raise Conflict(f"service {name!r} has no MED override")
        log.info("MED override of %s cleared by %s", name, author)
        meds = {k: m for k, m in self.intents.meds.items() if k != name}
        self._save(replace(self.intents, meds=meds))

    async def ramp(self, service: str, action: RampAction, *, author: str) -> None:
        name = self._service(service).name
        holds = set(self.intents.ramp_holds)
        mem = self.memory.get(name, Memory())
        match action:
            case RampAction.HOLD:
                holds.add(name)
            case RampAction.RESUME:
                holds.discard(name)
            case RampAction.ADVANCE:
                last = len(self.config.policy(self._service(name)).stages) - 1
                if not mem.was_up or mem.stage >= last:
                    raise Conflict(f"service {name!r} is not ramping")
                self.memory[name] = replace(mem, stage=mem.stage + 1, stage_since=self.clock())
            case RampAction.RESTART:
                if not mem.was_up:
                    raise Conflict(f"service {name!r} is not announced")
                self.memory[name] = replace(mem, stage=0, stage_since=self.clock())
        log.info("ramp %s %s by %s", name, action.value, author)
        self._save(replace(self.intents, ramp_holds=frozenset(holds)))

    async def reload(self) -> list[str]:
        """Validate the config file again and apply it as a diff; errors leave all unchanged."""
        if self.config_path is None:
            return ["this agent was started without a config file path"]
        async with self._step_lock:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                return exc.problems
            fixed = [
                f"{key}: changed, but it cannot change while running ({why})"
                for key, why in (
                    ("bgp", "ExaBGP's sessions come from it: render exabgp, drain, restart"),
                    ("state_dir", "restart the agent"),
                    ("control", "restart the agent"),
                )
                if getattr(new, key) != getattr(self.config, key)
            ]
            if fixed:
                log.error("reload refused, keeping the running config: %s", "; ".join(fixed))
                return fixed
            self._swap(new)
            self.config_text = self.config_path.read_bytes()
            self.fallback = False
            if not self.dry_run:
                save_last_good(new.state_dir, self.config_text)
            log.info("reloaded %s: %d services", self.config_path, len(new.services))
            self._wake()
            # Once the probes of removed targets have ended, so they are collected, not frozen.
            asyncio.get_running_loop().call_later(SETTLE_AFTER_RELOAD_S, settle_heap)
            return []

    def _swap(self, new: AgentConfig) -> None:
        old_targets = {rt.label: rt for runtimes in self.targets.values() for rt in runtimes}
        targets: dict[str, list[TargetRuntime]] = {}
        for svc in new.services:
            runtimes = []
            for t in svc.targets:
                rt = TargetRuntime(
                    svc.name, t, new.rise(t), new.fall(t), new.interval_s(t), new.timeout_s(t)
                )
                old = old_targets.pop(rt.label, None)
                if old is not None and old.same_check(rt):
                    rt = old  # same identity and check: keep its history and its probe
                elif old is not None and old.task is not None:
                    old.task.cancel()
                runtimes.append(rt)
            targets[svc.name] = runtimes
        for gone in old_targets.values():
            if gone.task is not None:
                gone.task.cancel()
        names = {s.name for s in new.services}
        self.memory = {k: m for k, m in self.memory.items() if k in names}
        self.outcomes = {k: o for k, o in self.outcomes.items() if k in names}
        now = self.clock()
        for svc in new.services:
            if svc.name not in self.memory:
                # A new (or renamed) service whose routes ExaBGP holds continues from them.
                self.memory[svc.name] = adopt(
                    svc, new.policy(svc), new.neighbors_of(svc), self.rib.held, now
                )
        stale = [k for k in (*self.intents.drains, *self.intents.meds) if k not in names | {POP}]
        if stale:
            log.warning("operator intents for services no longer configured: %s", stale)
        if new.addresses.interface != self.config.addresses.interface:
            self.addresses = Addresses(new.addresses.interface)
        self.config = new
        self.targets = targets
        self.notifier.set_stall_after(self._stall_after_s())
        for runtimes in targets.values():
            for rt in runtimes:
                if rt.task is None or rt.task.done():
                    self._start_probe(rt)

    # -- snapshot ------------------------------------------------------------------------------

    def progress(self) -> float:
        """Monotonic time of the last moment both probing and deciding were seen working."""
        has_targets = any(self.targets.values())
        return min(self.last_decide, self.last_probe) if has_targets else self.last_decide

    def snapshot(self) -> Snapshot:
        services = []
        for svc in self.config.services:
            outcome = self.outcomes.get(svc.name)
            decision = self.decisions.get(svc.name)
            mem = self.memory.get(svc.name, Memory())
            policy = self.config.policy(svc)
            targets = tuple(
                TargetSnapshot(
                    name=rt.target.name,
                    kind=type(rt.target.check).__name__.removesuffix("Check").lower(),
                    state=rt.health.state,
                    last_ok=rt.last.ok if rt.last else None,
                    last_reason=rt.last.reason if rt.last else "",
                    last_latency_s=rt.last.latency_s if rt.last else None,
                    load=rt.last.load if rt.last else None,
                    probes_ok=rt.ok,
                    probes_failed=rt.failed,
                    skipped_slots=rt.skipped,
                    transitions=rt.transitions,
                )
                for rt in self.targets.get(svc.name, [])
            )
            prefixes = {str(p) for p in svc.prefixes}
            wanted = outcome.wanted if outcome else {}
            keys = sorted({k for k in (*wanted, *self.rib.held) if k.prefix in prefixes})
            routes = tuple(
                RouteSnapshot(k.prefix, k.neighbor, wanted.get(k), self.rib.held.get(k))
                for k in keys
            )
            services.append(
                ServiceSnapshot(
                    name=svc.name,
                    status=outcome.phase.value if outcome else "unknown",
                    reason=outcome.reason if outcome else "not evaluated yet",
                    healthy=decision.healthy if decision else 0,
                    total=len(svc.targets),
                    quorum=svc.quorum(),
                    med=outcome.med if outcome else None,
                    stage=outcome.stage_percent if outcome else 0,
                    ramp_mode=policy.ramp_mode.value,
                    ramp_held=svc.name in self.intents.ramp_holds,
                    suppressed=mem.damping.suppressed,
                    penalty=outcome.penalty if outcome else 0.0,
                    drain=self.intents.drain_of(svc.name),
                    med_override=self.intents.meds.get(svc.name),
                    transitions=mem.transitions,
                    targets=targets,
                    routes=routes,
                )
            )
        acked = {("timeout" if k is None else k.value): v for k, v in self.speaker.acked.items()}
        return Snapshot(
            pop=self.config.pop,
            version=__version__,
            started_at=self.started_at,
            ready=self.ready,
            channel_up=not self.speaker.closed.is_set(),
            neighbors=dict(sorted(self.neighbors.items())),
            commands_sent=self.speaker.sent,
            commands_acked=acked,
            starts=self.starts,
            last_good_fallback=self.fallback,
            state_unreadable=self.state_unreadable,
            last_progress=self.progress(),
            services=tuple(services),
        )


def settle_heap() -> None:
    """Collect garbage once, then hide every object alive now (config, probes, modules) from
    the cyclic collector (`gc.freeze`). Without it a full collection walks all of them: at
    2,000 targets that stalled the probe loop for 50-120 ms every few seconds (measured with
    gc.callbacks in the bench), the tail of the probe-start jitter. Run after start and after
    each reload (unfreezing first, so what the reload dropped can be collected)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class _Guarded:
    """A probe bug fails its target instead of ending the agent (and, through ExaBGP's respawn
    limit, withdrawing the whole PoP). Logged with its traceback once per target."""

    def __init__(self, probe: Probe, label: str) -> None:
        self.probe = probe
        self.label = label
        self.logged = False

    async def check(self) -> ProbeResult:
        try:
            return await self.probe.check()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._error(exc)

    def _error(self, exc: Exception) -> ProbeResult:
        if not self.logged:
            log.error("probe of %s failed unexpectedly", self.label, exc_info=exc)
            self.logged = True
        return ProbeResult(ok=False, latency_s=0.0, reason=f"probe error: {exc!r}")


class _GuardedCallback(_Guarded):
    """_Guarded for a CallbackProbe: a `start` that raises fails this check, not the schedule."""

    probe: CallbackProbe

    def __init__(self, probe: CallbackProbe, label: str) -> None:
        super().__init__(probe, label)
        self.probe = probe

    def start(self, done: Callable[[ProbeResult], None]) -> None:
        # If `start` reported before raising, the schedule ignores this second report.
        try:
            self.probe.start(done)
        except Exception as exc:
            self.probe.abort()
            done(self._error(exc))

    def abort(self) -> None:
        self.probe.abort()


class _Broken:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def check(self) -> ProbeResult:
        return ProbeResult(ok=False, latency_s=0.0, reason=self.reason)


def _describe(intents: Intents) -> str:
    parts = [f"drain {k}" for k in intents.drains] + [f"med {k}" for k in intents.meds]
    return ", ".join(parts) or "none"


class DryRunSpeaker:
    """Prints each command instead of sending it, and answers `done` (`run --dry-run`)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.closed = asyncio.Event()
        self.events: asyncio.Queue[Inbound] = asyncio.Queue()
        self.sent = 0
        self.acked: dict[Ack | None, int] = {}
        self._write = write

    async def read_forever(self) -> None:
        await asyncio.Event().wait()

    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack:
        self._write(line)
        self.sent += 1
        self.acked[Ack.DONE] = self.acked.get(Ack.DONE, 0) + 1
        return Ack.DONE

    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]:
        return []


def config_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
