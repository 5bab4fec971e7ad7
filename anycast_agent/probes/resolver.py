"""Host names of targets, resolved off the probe path and kept (DESIGN §3.2a, R19).

A check never waits for the resolver: it connects to the addresses last resolved. Each name is
resolved again in the background every `refresh_s`, with a deadline, one lookup at a time;
when that fails the last good addresses stay in use (and the failure is logged once), so a
resolver outage is a checker's problem, never a dead target. Only a name that has never been
resolved fails its checks, as a checker fault (`resolver`).

getaddrinfo (which honours /etc/hosts and nsswitch, as an operator expects) reports no TTL,
so the refresh period is fixed rather than the record's TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from aiohttp.abc import AbstractResolver, ResolveResult

log = logging.getLogger("anycast_agent")

Lookup: TypeAlias = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # loop.getaddrinfo's shape

REFRESH_S = 30.0
DEADLINE_S = 2.0


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolver(AbstractResolver):
    """The probes' resolver; also aiohttp's (`TCPConnector(resolver=...)`) for HTTPS checks."""

    def __init__(
        self,
        *,
        refresh: float = REFRESH_S,
        deadline: float = DEADLINE_S,
        getaddrinfo: Lookup | None = None,
    ) -> None:
        """`refresh` and `deadline` in seconds, as the config's `resolver` section has them."""
        self.refresh_s = refresh
        self.deadline_s = deadline
        self._getaddrinfo = getaddrinfo
        self._known: dict[str, list[tuple[int, str]]] = {}  # host -> [(family, address)]
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()

    async def addresses(self, host: str) -> list[tuple[int, str]]:
        """(family, address) pairs for `host`: at once when known (refreshed in the
        background), else looked up now within the deadline; socket.gaierror when none."""
        if is_address(host):
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        known = self._known.get(host)
        if host not in self._refreshing:
            self._refreshing[host] = asyncio.get_running_loop().create_task(
                self._refresh_forever(host), name=f"resolve:{host}"
            )
        if known:
            return known
        await self._lookup(host)
        known = self._known.get(host)
        if not known:
            raise socket.gaierror(socket.EAI_AGAIN, f"{host!r} not resolved yet")
        return known

    async def _refresh_forever(self, host: str) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self._lookup(host)

    async def _lookup(self, host: str) -> None:
        lookup = self._getaddrinfo or asyncio.get_running_loop().getaddrinfo
        try:
            async with asyncio.timeout(self.deadline_s):
                infos = await lookup(host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            if host not in self._failing:
                self._failing.add(host)
                kept = "keeping the last addresses" if host in self._known else "none known yet"
                log.warning("cannot resolve %r (%s): %s", host, why, kept)
            return
        found = sorted({(int(family), str(sa[0])) for family, _, _, _, sa in infos})
        if host in self._failing:
            self._failing.discard(host)
            log.info("resolving %r works again", host)
        self._known[host] = found

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
            for fam, address in await self.addresses(host)
            if family in (socket.AF_UNSPEC, fam)
        ] or _none(host)

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        self._refreshing.clear()


def _none(host: str) -> list[ResolveResult]:
    raise socket.gaierror(socket.EAI_ADDRFAMILY, f"no address of the asked family for {host!r}")
