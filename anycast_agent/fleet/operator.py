"""The operator's side of the fleet (FLEET.md §3.2, §3.7, §3.8) over EtcdClient: `ctl/` writes
that never overwrite another operator's change, the fleet as its keys show it, and waiting until
the PoPs acknowledge a change. The command line around it is `operator_cli`.

Every write is a transaction that compares the key's mod_revision as read (create_revision 0
for a new key): an operator who lost a race is told what is there now instead of replacing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from anycast_agent.core.fleet_intents import ramp_share
from anycast_agent.fleet.etcd_http import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    KeyValue,
    PutOp,
)
from anycast_agent.fleet.operator_view import (
    PopInfo,
    Scope,
    Snapshot,
    Value,
    applied_rev,
    describe,
    encode,
    ramp_fields,
    value_of,
)

POLL_S = 0.25


class OperatorRefused(Exception):
    """The keys as they are do not allow the change, or the PoPs did not follow (exit 1)."""


class Conflict(OperatorRefused):
    """Another operator changed the key between our read and our write: nothing written."""


class WaitTimedOut(OperatorRefused):
    """Some PoPs in scope did not acknowledge the write in time; the message names them."""


class IntentAction(enum.StrEnum):
    DRAIN = "drain"
    MED = "med"


@dataclass(frozen=True, slots=True)
class Written:
    key: str  # relative to the prefix
    revision: int  # of the write; 0 when there was nothing to write
    before: Value | None
    after: Value | None


@dataclass(frozen=True, slots=True)
class RampChange:
    key: str
    revision: int
    percent: float
    salt: str
    members: tuple[str, ...]
    before: frozenset[str]  # active before the write (every member when no ramp was set)
    after: frozenset[str]
    started: bool


class Operator:
    """Reads and writes the fleet's keys under `prefix` as `author`."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        author: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.prefix, self.author, self.clock = client, prefix, author, clock

    async def snapshot(self) -> Snapshot:
        found = await self.client.range(self.prefix, prefix=True)
        keys = {kv.key.removeprefix(self.prefix): kv for kv in found.kvs}
        return Snapshot(found.revision, keys)

    async def read(self, key: str) -> KeyValue | None:
        found = await self.client.range(self.prefix + key)
        return found.kvs[0] if found.kvs else None

    async def commit(
        self, key: str, seen: KeyValue | None, value: Value | None, *, ttl_s: float | None = None
    ) -> int:
        """Put `value` (or delete the key: None) if the key is still as `seen`; the revision
        of the write. Raises Conflict naming what is there now."""
        full = self.prefix + key
        if seen is None:
            compare = Compare(full, CompareTarget.CREATE, CompareOp.EQUAL, 0)
        else:
            compare = Compare(full, CompareTarget.MOD, CompareOp.EQUAL, seen.mod_revision)
        lease = 0
        if value is not None and ttl_s is not None:
            lease = (await self.client.grant(max(2, math.ceil(ttl_s)))).id
        raw = None if value is None else encode(value)
        op = DeleteOp(full) if raw is None else PutOp(full, raw, lease)
        try:
            result = await self.client.txn([compare], [op])
        except EtcdOutcomeUnknown as exc:
            return await self._landed(key, raw, exc)
        if result.succeeded:
            return result.revision
        if lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)
        now = await self.read(key)
        was = f"revision {seen.mod_revision}" if seen is not None else "absent"
        raise Conflict(
            f"{key} changed since it was read ({was}); it now holds {describe(now)}. "
            "Nothing was written: look at the new value and run the command again"
        )

    async def _landed(self, key: str, raw: bytes | None, exc: EtcdOutcomeUnknown) -> int:
        """A write whose answer was lost: its revision if the key shows it landed."""
        try:
            found = await self.client.range(self.prefix + key)
        except EtcdError as again:
            raise EtcdOutcomeUnknown(f"{exc}; re-reading {key} failed: {again}") from None
        kv = found.kvs[0] if found.kvs else None
        if raw is None and kv is None:
            return found.revision  # gone: at or before this revision
        if raw is not None and kv is not None and kv.value == raw:
            return kv.mod_revision  # ours: every value carries its own timestamp
        raise EtcdOutcomeUnknown(f"{exc}; {key} now holds {describe(kv)}") from None

    def _stamped(self, fields: Value, reason: str, stamp: str = "created") -> Value:
        return {**fields, "reason": reason, "author": self.author, stamp: self.clock()}

    # -- intents ------------------------------------------------------------------------------

    async def set_intent(
        self,
        scope: Scope,
        action: IntentAction,
        *,
        reason: str,
        med: int | None = None,
        expires_s: float | None = None,
        replace: bool = False,
    ) -> Written:
        """Drain or MED a scope (over the same action: updated); a key holding the other
        action is refused unless `replace`."""

        def refuse(held: Value | None) -> str:
            other = _action(held)
            if replace or other in (None, action):
                return ""
            return f"holds a {other}: un{other} it first, or --replace"

        fields: Value = {"action": action.value}
        if action is IntentAction.MED:
            fields["med"] = med
        key = scope.intent_key()
        return await self.put(key, fields, reason=reason, ttl_s=expires_s, refuse=refuse)

    async def clear_intent(self, scope: Scope, action: IntentAction) -> Written:
        """Delete the scope's intent unless it holds the other action."""

        def refuse(held: Value | None) -> str:
            other = _action(held)
            return "" if other in (None, action) else f"holds a {other}, not a {action}"

        return await self.delete(scope.intent_key(), refuse=refuse)

    # -- ramps --------------------------------------------------------------------------------

    async def ramp(
        self, scope: Scope, percent: float, *, reason: str, members: Sequence[str] | None = None
    ) -> RampChange:
        """Start a ramp (members from `members`, else the PoPs in scope now; a random salt) or
        move it to `percent`; the salt and members never change mid-ramp."""
        key = scope.ramp_key()
        seen = await self.read(key)
        if seen is None:
            found = (
                members if members is not None else sorted((await self.snapshot()).in_scope(scope))
            )
            chosen = list(dict.fromkeys(found))
            if not chosen:
                raise OperatorRefused(
                    f"no registered PoP is in {scope.path} to freeze as the ramp's members: "
                    "name them with --members"
                )
            salt = secrets.token_hex(8)
            before = frozenset(chosen)  # no ramp: every PoP is active
        else:
            held = ramp_fields(value_of(seen))
            if held is None:
                raise OperatorRefused(f"{key} is not a ramp: {describe(seen)}; --end --force")
            old_percent, salt, chosen = held
            if members is not None and set(members) != set(chosen):
                raise OperatorRefused(
                    f"{key}: the members were frozen when the ramp started "
                    f"({len(chosen)}: {', '.join(chosen)}); other members would reshuffle the "
                    "active PoPs. End the ramp first (--end at 100%, or --force)"
                )
            before = ramp_share(chosen, salt, old_percent)
        number = int(percent) if float(percent).is_integer() else percent
        fields: Value = {"percent": number, "salt": salt, "members": chosen}
        revision = await self.commit(key, seen, self._stamped(fields, reason, "set_at"))
        after = ramp_share(chosen, salt, percent)
        return RampChange(key, revision, percent, salt, tuple(chosen), before, after, seen is None)

    async def end_ramp(self, scope: Scope, *, force: bool = False) -> Written:
        """Delete the ramp: every PoP becomes active, so only at 100 % unless `force`."""

        def refuse(held: Value | None) -> str:
            percent = (held or {}).get("percent")
            if force or percent == 100:
                return ""
            return f"is at {percent}%: ending it activates every PoP; 100 first, or --force"

        return await self.delete(scope.ramp_key(), refuse=refuse)

    # -- freeze, policy, budget, override ---------------------------------------------------------

    async def put(
        self,
        key: str,
        fields: Value,
        *,
        reason: str,
        ttl_s: float | None = None,
        keep: bool = False,
        refuse: Callable[[Value | None], str] | None = None,
    ) -> Written:
        """Set `key` to `fields` stamped with reason and author, unless `refuse` says why not
        (given the value there now); with `keep`, an existing key stays as it is."""
        seen = await self.read(key)
        before = _checked(key, seen, refuse)
        if seen is not None and keep:
            return Written(key, 0, before, before)
        after = self._stamped(fields, reason)
        return Written(key, await self.commit(key, seen, after, ttl_s=ttl_s), before, after)

    async def delete(
        self, key: str, *, refuse: Callable[[Value | None], str] | None = None
    ) -> Written:
        """Delete `key` unless `refuse` says why not; revision 0 when there was none."""
        seen = await self.read(key)
        if seen is None:
            return Written(key, 0, None, None)
        before = _checked(key, seen, refuse)
        return Written(key, await self.commit(key, seen, None), before, None)

    # -- acknowledgements ------------------------------------------------------------------------

    async def wait_applied(
        self,
        scope: Scope,
        revision: int,
        *,
        timeout_s: float,
        progress: Callable[[str], None],
        poll_s: float = POLL_S,
    ) -> int:
        """Poll until every PoP in scope has `ctl_rev_applied` ≥ `revision`; how many did.
        Progress lines go to `progress` when they change; WaitTimedOut names the laggards."""
        deadline = time.monotonic() + timeout_s
        shown = ""
        while True:
            snap = await self.snapshot()
            pops = snap.pops()
            scoped = sorted(snap.in_scope(scope))
            behind = [p for p in scoped if applied_rev(pops.get(p)) < revision]
            line = f"{len(scoped) - len(behind)}/{len(scoped)} PoPs applied revision {revision}"
            if behind:
                line += f"; waiting for {', '.join(behind)}"
            if line != shown:
                progress(line)
                shown = line
            if not behind:
                return len(scoped)
            left = deadline - time.monotonic()
            if left <= 0:
                lag = ", ".join(_lag(p, pops.get(p)) for p in behind)
                raise WaitTimedOut(
                    f"timed out after {timeout_s:g}s: {len(behind)} of {len(scoped)} PoPs have "
                    f"not applied revision {revision}: {lag}"
                )
            await asyncio.sleep(min(poll_s, left))


def _checked(
    key: str, seen: KeyValue | None, refuse: Callable[[Value | None], str] | None
) -> Value | None:
    """The value there now, if `refuse` finds nothing against changing it."""
    before = value_of(seen)
    if seen is not None and refuse is not None and (why := refuse(before)):
        raise OperatorRefused(f"{key} {why} (now: {describe(seen)})")
    return before


def _lag(pop: str, info: PopInfo | None) -> str:
    if info is None:
        return f"{pop} (not registered: its agent is down or cut off)"
    if info.ctl_rev_applied is None:
        return f"{pop} (acknowledges no revision)"
    return f"{pop} (at revision {info.ctl_rev_applied})"


def _action(value: Value | None) -> str | None:
    action = (value or {}).get("action")
    return action if isinstance(action, str) else None
