"""The agent's side of the fleet (FLEET.md §3.2-§3.6): its session lease, the states it
publishes, a live copy of the fleet's keys, and the guard's K-witness transaction.

Decisions are the core's (`core.fleet`): this module reads, runs the transaction the decision
asks for, and reports modes, view changes and answers back as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from anycast_agent.core.events import (
    Event,
    FleetCtlChanged,
    FleetModeChanged,
    FleetViewChanged,
    Instant,
)
from anycast_agent.core.fleet import GuardView, Liveness, Permit, Seen, guard_decision, next_mode
from anycast_agent.fleet import ctl_copy
from anycast_agent.fleet.etcd_http import (
    Compare,
    CompareOp,
    CompareTarget,
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    KeyValue,
    Mirror,
    PutOp,
)
from anycast_agent.model import Announcing, FleetMode, RefusalReason, WithdrawKind

log = logging.getLogger("anycast_agent.fleet")

GUARD_ATTEMPTS = 10  # a 20-way race needed at most 6 (FLEET.md §3.3)
MODE_EVERY_S = 0.25
WATCH_GRACE_S = 2.0
RETRY_S = 1.0  # between attempts to get a lease back while DEGRADED


@dataclass(frozen=True, slots=True)
class FleetSettings:
    prefix: str
    pop: str
    region: str
    version: str
    min_pops: int
    budget_slots: int
    budget_window_s: float
    lease_ttl_s: float
    stale_after_s: float
    state_dir: Path | None = None  # where the copy of ctl/ is kept (None: nowhere)


@dataclass(frozen=True, slots=True)
class FleetStats:
    """What metrics show of the coordination that the core does not know."""

    slots_in_use: int
    slots: int
    last_ok: float | None  # monotonic time etcd last answered (None: never yet)
    lease: bool


Answer = tuple[RefusalReason | None, str]  # None: permitted


class Coordinator:
    def __init__(
        self,
        client: EtcdClient,
        settings: FleetSettings,
        report: Callable[[Event], Awaitable[None]],
        now: Callable[[], Instant],
    ) -> None:
        self.client, self.settings, self.report, self.now = client, settings, report, now
        self.mode = FleetMode.DEGRADED
        self.lease: int | None = None
        self.last_ok: float | None = None
        self.desired: dict[str, Announcing] = {}
        self.written: dict[str, Announcing] = {}  # under the current lease
        self.pops_written: bytes | None = None  # `pops/<pop>` as written under the lease
        self.mirror = Mirror(client, settings.prefix, self._viewed, clock=time.monotonic)
        self._dirty = asyncio.Event()  # something to publish
        self._view_changed = asyncio.Event()
        # One writer of the own keys at a time: a state put landing after the guard's
        # transaction wrote W would make others count a PoP that is withdrawing.
        self._writing = asyncio.Lock()
        self.ctl_applied = 0  # the revision of the ctl/ view the core has applied
        self._ctl_seen: dict[str, bytes] | None = None
        self._failing: set[str] = set()  # what already warned in this mode (once, not per try)

    # -- the agent's surface -------------------------------------------------------------------

    def publish(self, states: Mapping[str, Announcing]) -> None:
        """The services' states to write (only the ones that changed are written)."""
        self.desired = dict(states)
        self._dirty.set()

    def stats(self) -> FleetStats:
        slots = sum(1 for k in self.mirror.view if k.startswith(self._key("budget/slot/")))
        return FleetStats(slots, self._budget()[0], self.last_ok, self.lease is not None)

    async def ask(self, service: str, kind: WithdrawKind) -> Answer:
        """The guard (FLEET.md §3.5): permitted only if a transaction commits that checks K
        witnesses unchanged (and, for health, takes a budget slot). Never permits on an
        unknown outcome."""
        if self.mode is not FleetMode.CONNECTED or self.lease is None:
            return RefusalReason.DEGRADED, "not connected to etcd"
        try:
            async with self._writing:
                return await self._attempts(service, kind)
        except EtcdError as exc:
            return RefusalReason.UNANSWERED, str(exc)

    async def _attempts(self, service: str, kind: WithdrawKind) -> Answer:
        budget_lease = 0
        try:
            for _ in range(GUARD_ATTEMPTS):
                view, mods, override = await self._read(service, kind)
                decision = guard_decision(view)
                if not isinstance(decision, Permit):
                    return decision.reason, decision.detail
                if decision.slot is not None and not budget_lease:
                    budget_lease = (await self.client.grant(round(self._budget()[1]))).id
                own = self._key(f"svc/{service}/pop/{self.settings.pop}")
                try:
                    done = await self._commit(service, decision, mods, override, budget_lease)
                    answer: Answer = (None, "committed")
                except EtcdOutcomeUnknown as exc:
                    answer = await self._resolve(own, mods.get(own, 0), exc)
                    done = answer[0] is None
                    if not done:
                        return answer
                if done:
                    if decision.slot is not None:
                        budget_lease = 0  # the slot holds it now
                    # W from now on, until the core says otherwise (the routes stayed).
                    self.written[service] = self.desired[service] = Announcing.WITHDRAWN
                    return answer
                await asyncio.sleep(random.uniform(0.005, 0.03))
            return RefusalReason.UNANSWERED, f"{GUARD_ATTEMPTS} attempts lost their race"
        finally:
            if budget_lease:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke(budget_lease)

    # -- the guard's reads and transaction -----------------------------------------------------

    async def _read(
        self, service: str, kind: WithdrawKind
    ) -> tuple[GuardView, dict[str, int], int]:
        """Linearizable reads of what the decision needs: the view, each key's mod_revision,
        and the create_revision of an operator override for this PoP (0: none)."""
        pop, key = self.settings.pop, self._key
        states = await self.client.range(key(f"svc/{service}/pop/"), prefix=True)
        ctl = await self.client.range(key("ctl/"), prefix=True)
        slots = await self.client.range(key("budget/slot/"), prefix=True)
        self.last_ok = time.monotonic()
        mods = {kv.key: kv.mod_revision for kv in (*states.kvs, *ctl.kvs)}
        creates = {kv.key: kv.create_revision for kv in ctl.kvs}
        seen: dict[str, Seen] = {}
        for kv in states.kvs:
            state = _state(kv.value)
            if state is not None:
                seen[kv.key.rpartition("/")[2]] = Seen(state, kv.mod_revision)
        policy = {kv.key: kv for kv in ctl.kvs}.get(key(f"ctl/policy/{service}"))
        taken = {kv.key.rpartition("/")[2] for kv in slots.kvs}
        count = self._budget({kv.key: kv for kv in ctl.kvs})[0]
        view = GuardView(
            pop=pop,
            kind=kind,
            states=seen,
            min_pops=_min_pops(policy, self.settings.min_pops),
            frozen=key("ctl/freeze") in creates,
            override=key(f"ctl/override/{service}/{pop}") in creates,
            free_slots=tuple(n for n in (f"{i:02d}" for i in range(count)) if n not in taken),
        )
        return view, mods, creates.get(key(f"ctl/override/{service}/{pop}"), 0)

    async def _commit(
        self, service: str, permit: Permit, mods: dict[str, int], override: int, lease: int
    ) -> bool:
        """The K-witness transaction: the own key, the policy and the witnesses unchanged, no
        freeze and a free slot for a health withdraw; then own key W and the slot taken."""
        key, pop = self._key, self.settings.pop
        assert self.lease is not None
        own = key(f"svc/{service}/pop/{pop}")
        compares = [_unchanged(own, mods.get(own, 0))]
        policy = key(f"ctl/policy/{service}")
        compares.append(_unchanged(policy, mods.get(policy, 0)))
        if override and not permit.witnesses:  # the override replaces the K witnesses
            ctl = key(f"ctl/override/{service}/{pop}")
            compares.append(Compare(ctl, CompareTarget.CREATE, CompareOp.EQUAL, override))
        compares += [
            _unchanged(key(f"svc/{service}/pop/{w}"), mods[key(f"svc/{service}/pop/{w}")])
            for w in permit.witnesses
        ]
        puts = [PutOp(own, Announcing.WITHDRAWN.encode(), self.lease)]
        if permit.slot is not None:
            compares.append(Compare(key("ctl/freeze"), CompareTarget.CREATE, CompareOp.EQUAL, 0))
            slot = key(f"budget/slot/{permit.slot}")
            compares.append(Compare(slot, CompareTarget.CREATE, CompareOp.EQUAL, 0))
            puts.append(PutOp(slot, f"{pop}/{service}/health".encode(), lease))
        result = await self.client.txn(compares, puts)
        self.last_ok = time.monotonic()
        return result.succeeded

    async def _resolve(self, own: str, before: int, exc: EtcdOutcomeUnknown) -> Answer:
        """A transaction whose answer was lost: permitted only if the own key shows it landed."""
        try:
            now = await self.client.range(own)
        except EtcdError as again:
            return RefusalReason.UNANSWERED, f"{exc}; re-reading {own} failed: {again}"
        kv = now.kvs[0] if now.kvs else None
        if kv is not None and kv.mod_revision > before and kv.value == b"W":
            return None, "committed (answer lost, own key re-read)"
        return RefusalReason.UNANSWERED, f"{exc}: the transaction did not land"

    # -- the loops -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the lease, the live view and the published states; report the mode."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.mirror.run(), name="fleet:mirror")
            tg.create_task(self._lease_forever(), name="fleet:lease")
            tg.create_task(self._publish_forever(), name="fleet:publish")
            tg.create_task(self._views_forever(), name="fleet:views")
            await self._modes_forever()

    async def _modes_forever(self) -> None:
        while True:
            down = None if self.mirror.up else (self.mirror.down_since or time.monotonic())
            seen = Liveness(self.last_ok, self.lease is not None, down, self.published)
            mode, why = next_mode(
                self.mode, seen, time.monotonic(), self.settings.stale_after_s, WATCH_GRACE_S
            )
            if mode is not self.mode:
                self.mode = mode
                self._failing.clear()  # the core logs the change; failures are news again
                await self.report(FleetModeChanged(self.now(), mode, why))
                self._dirty.set()  # pops/<pop> carries the mode
            await asyncio.sleep(MODE_EVERY_S)

    async def _lease_forever(self) -> None:
        ttl = self.settings.lease_ttl_s
        while True:
            if self.lease is None:
                try:
                    self.lease = (await self.client.grant(round(ttl))).id
                    self.written, self.pops_written = {}, None  # all again, under the new lease
                    self.last_ok = time.monotonic()
                    self._dirty.set()
                except EtcdError as exc:
                    self._failed("lease", f"no session lease: {exc}")
                    await asyncio.sleep(RETRY_S)
                    continue
            await asyncio.sleep(ttl / 3)
            try:
                left = await self.client.keepalive(self.lease)
            except EtcdError as exc:
                self._failed("keepalive", f"keepalive failed: {exc}")
                continue
            self.last_ok = time.monotonic()
            if left <= 0:
                log.warning("fleet: the session lease expired: granting a new one")
                self.lease = None

    async def _publish_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            lease = self.lease
            if lease is None:
                continue
            try:
                async with self._writing:
                    await self._publish(lease)
            except EtcdError as exc:
                self._failed("publish", f"publishing failed, tried again: {exc}")
                await asyncio.sleep(RETRY_S)
                self._dirty.set()

    async def _publish(self, lease: int) -> None:
        about = _json(
            {
                "region": self.settings.region,
                "version": self.settings.version,
                "mode": self.mode,
                "ctl_rev_applied": self.ctl_applied,
            }
        )
        if self.pops_written != about:  # pops/<pop>: the PoP is alive, and what it is
            await self.client.put(self._key(f"pops/{self.settings.pop}"), about, lease=lease)
            self.pops_written = about
        for service, state in sorted(self.desired.items()):
            if self.written.get(service) != state and self.lease == lease:
                own = self._key(f"svc/{service}/pop/{self.settings.pop}")
                await self.client.put(own, state.encode(), lease=lease)
                self.written[service] = state
                self.last_ok = time.monotonic()
        for service in set(self.written) - set(self.desired):
            await self.client.delete(self._key(f"svc/{service}/pop/{self.settings.pop}"))
            del self.written[service]

    async def _views_forever(self) -> None:
        while True:
            await self._view_changed.wait()
            self._view_changed.clear()
            if self.mirror.up:
                await self._ctl_changed()
            await self.report(FleetViewChanged(self.now()))

    async def _ctl_changed(self) -> None:
        """A new ctl/ view goes to the core, then to the agent's copy, then its revision is
        acknowledged in pops/<pop> (FLEET.md §3.8)."""
        prefix = self._key("ctl/")
        ctl = {
            k[len(prefix) :]: kv.value for k, kv in self.mirror.view.items() if k.startswith(prefix)
        }
        if ctl == self._ctl_seen:
            return
        self._ctl_seen, revision = ctl, self.mirror.revision
        await self.report(FleetCtlChanged(self.now(), ctl, revision))
        if self.settings.state_dir is not None:
            problem = ctl_copy.save(self.settings.state_dir, ctl, revision)
            if problem:
                self._failed("copy", f"{problem}: a restart without etcd would not know ctl/")
        self.ctl_applied = revision
        self._dirty.set()

    def _viewed(self, _mirror: Mirror) -> None:
        self._view_changed.set()

    # -- helpers ---------------------------------------------------------------------------------

    def _failed(self, what: str, message: str) -> None:
        """A warning on the first failure of `what` in this mode, debug after that."""
        level = logging.DEBUG if what in self._failing else logging.WARNING
        self._failing.add(what)
        log.log(level, "fleet: %s", message)

    def _key(self, rest: str) -> str:
        return self.settings.prefix + rest

    def _budget(self, ctl: Mapping[str, KeyValue] | None = None) -> tuple[int, float]:
        """(slots, window_s): `ctl/budget` if set and valid, else the config's."""
        kv = (ctl if ctl is not None else self.mirror.view).get(self._key("ctl/budget"))
        default = self.settings.budget_slots, self.settings.budget_window_s
        if kv is None:
            return default
        try:
            value = json.loads(kv.value)
            slots, window = int(value["slots"]), float(value["window_s"])
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("fleet: ctl/budget is not {slots, window_s}: using the config's")
            return default
        if not (1 <= slots <= 100 and 2 <= window <= 86400):
            log.warning("fleet: ctl/budget %r is out of range: using the config's", value)
            return default
        return slots, window

    @property
    def published(self) -> bool:
        """Every state is written under the current lease."""
        return (
            self.lease is not None
            and self.pops_written is not None
            and (self.written == self.desired)
        )


def _unchanged(key: str, mod: int) -> Compare:
    if mod == 0:
        return Compare(key, CompareTarget.CREATE, CompareOp.EQUAL, 0)
    return Compare(key, CompareTarget.MOD, CompareOp.EQUAL, mod)


def _state(value: bytes) -> Announcing | None:
    try:
        return Announcing(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None  # not a state: counts as not announcing


def _min_pops(policy: KeyValue | None, default: int) -> int:
    if policy is None:
        return default
    try:
        value = json.loads(policy.value)["min_pops"]
    except (ValueError, KeyError, TypeError, RecursionError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 120:
        log.warning("fleet: %s is not {min_pops: 0..120}: using %d", policy.key, default)
        return default
    return value


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
