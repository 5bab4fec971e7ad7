"""A live copy of every key under an etcd prefix, rebuilt after any break (FLEET.md §3.1 rule 4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from anycast_agent.fleet.etcd_types import EtcdError, EventKind, KeyValue, WatchEvent

if TYPE_CHECKING:
    from anycast_agent.fleet.etcd_http import EtcdClient

log = logging.getLogger("anycast_agent.fleet")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 1.0


class Mirror:
    """A live copy of every key under a prefix: linearizable range, then watch from
    revision+1; on any break, range again and re-watch (FLEET.md §3.1 rule 4).

    A fresh range replaces the view only once the watch that continues it is confirmed, so
    `view`, `revision` and `up` always change together. `on_change` is called after each
    rebuild, after each batch of events, and when the mirror goes down.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        on_change: Callable[[Mirror], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._on_change = on_change
        self._clock = clock
        self._view: dict[str, KeyValue] = {}
        self._revision = 0
        self._up = False
        self._down_since: float | None = clock()

    @property
    def view(self) -> Mapping[str, KeyValue]:
        """The keys under the prefix as of `revision`: a live read-only view (copy to keep)."""
        return MappingProxyType(self._view)

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def up(self) -> bool:
        """True while a watch built on a fresh range is running."""
        return self._up

    @property
    def down_since(self) -> float | None:
        """clock() when the mirror last went down (construction time before the first rebuild)."""
        return self._down_since

    async def run(self) -> None:
        """Keep the view live until cancelled; etcd failures are logged and retried."""
        backoff_s = BACKOFF_FIRST_S
        last_failure = ""
        while True:
            try:
                await self._follow()
            except EtcdError as exc:
                failure = str(exc)
                # One warning per distinct failure: an outage repeats the same one each retry.
                level = logging.WARNING if failure != last_failure else logging.DEBUG
                log.log(level, "etcd mirror of %r is down: %s", self._prefix, failure)
                last_failure = failure
                if self._up:
                    backoff_s = BACKOFF_FIRST_S
                    self._up = False
                    self._down_since = self._clock()
                    self._on_change(self)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _follow(self) -> None:
        """One rebuild and the watch that follows it; returns or raises when the watch breaks."""
        fresh = await self._client.range(self._prefix, prefix=True)
        stream = self._client.watch(self._prefix, fresh.revision + 1)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                if not self._up:
                    # The first (empty) batch: the watch continuing the fresh range is live.
                    self._view.clear()
                    self._view.update((kv.key, kv) for kv in fresh.kvs)
                    self._revision = fresh.revision
                    self._up = True
                    self._down_since = None
                    log.info("etcd mirror of %r is up at revision %d", self._prefix, fresh.revision)
                elif not batch:
                    continue
                self._apply(batch)
                self._on_change(self)

    def _apply(self, batch: list[WatchEvent]) -> None:
        for event in batch:
            if event.kind is EventKind.PUT:
                self._view[event.kv.key] = event.kv
            else:
                self._view.pop(event.kv.key, None)
            self._revision = max(self._revision, event.kv.mod_revision)
