"""Host-name targets: resolved off the probe path, the last good addresses kept (R19)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from anycast_agent.config import HttpCheck, TcpCheck
from anycast_agent.model import CheckerFault
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.resolver import Resolver
from anycast_agent.probes.tcp import TcpProbe


class Dns:
    """A getaddrinfo whose answers the test sets: addresses, an error, or silence."""

    def __init__(self) -> None:
        self.answer: list[str] | Exception | None = ["127.0.0.1"]
        self.calls = 0

    async def __call__(self, host: str, port: object, **kw: Any) -> list[tuple[Any, ...]]:
        self.calls += 1
        if self.answer is None:
            await asyncio.sleep(3600)  # a blackholed resolver: no answer at all
        if isinstance(self.answer, Exception):
            raise self.answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in self.answer]


async def listener() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_host_name_target_keeps_its_last_addresses_when_the_resolver_fails() -> None:
    server, port = await listener()
    dns = Dns()
    resolver = Resolver(refresh=0.05, deadline=0.1, getaddrinfo=dns)
    probe = TcpProbe(TcpCheck(host="edge1.lab.test", port=port), 0.5, resolver)
    try:
        assert (await probe.check()).ok
        dns.answer = None  # blackholed from now on
        calls = dns.calls
        for _ in range(5):
            result = await asyncio.wait_for(probe.check(), 0.3)  # never waits for DNS
            assert result.ok, result
            await asyncio.sleep(0.05)
        assert dns.calls > calls  # it kept trying in the background
        dns.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await asyncio.sleep(0.15)
        assert (await probe.check()).ok
    finally:
        await resolver.close()
        server.close()


async def test_a_name_never_resolved_is_a_checker_fault_not_a_target_failure() -> None:
    dns = Dns()
    dns.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    resolver = Resolver(deadline=0.1, getaddrinfo=dns)
    try:
        result = await TcpProbe(TcpCheck(host="edge9.lab.test", port=9), 0.5, resolver).check()
    finally:
        await resolver.close()
    assert not result.ok and result.checker is CheckerFault.RESOLVER
    assert "edge9.lab.test" in result.reason


async def test_a_silent_resolver_costs_a_first_check_its_deadline_only() -> None:
    dns = Dns()
    dns.answer = None
    resolver = Resolver(deadline=0.1, getaddrinfo=dns)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        result = await TcpProbe(TcpCheck(host="edge9.lab.test", port=9), 0.5, resolver).check()
    finally:
        await resolver.close()
    assert result.checker is CheckerFault.RESOLVER
    assert loop.time() - started < 0.5


async def test_aiohttp_gets_the_kept_addresses() -> None:
    dns = Dns()
    resolver = Resolver(getaddrinfo=dns)
    try:
        [found] = await resolver.resolve("edge1.lab.test", 8080)
        assert (found["host"], found["port"], found["hostname"]) == (
            "127.0.0.1",
            8080,
            "edge1.lab.test",
        )
        with pytest.raises(socket.gaierror):
            await resolver.resolve("edge1.lab.test", 8080, family=socket.AF_INET6)
    finally:
        await resolver.close()


async def test_an_https_target_never_resolved_is_a_checker_fault() -> None:
    dns = Dns()
    dns.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    async with ProbeFactory(Resolver(deadline=0.1, getaddrinfo=dns)) as factory:
        probe = factory.build(HttpCheck(url="https://edge9.lab.test/health"), 0.5)
        result = await probe.check()
    assert not result.ok and result.checker is CheckerFault.RESOLVER
