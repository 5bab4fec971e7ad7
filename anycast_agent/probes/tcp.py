"""The TCP probe: a target is healthy when a connection to host:port completes in time."""

from __future__ import annotations

import asyncio
import socket
import time

from anycast_agent.config import TcpCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes.base import checker_fault, host_port, timeout_reason
from anycast_agent.probes.resolver import Resolver


class TcpProbe:
    """Connect, then close at once; nothing is sent."""

    __slots__ = ("_host", "_port", "_resolver", "_timeout_s", "_where")

    def __init__(self, check: TcpCheck, timeout_s: float, resolver: Resolver | None = None) -> None:
        self._host = check.host
        self._port = check.port
        self._timeout_s = timeout_s
        self._where = host_port(check.host, check.port)
        self._resolver = resolver or Resolver()

    async def check(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        reason, fault = "", None
        try:
            # Known at once (looked up in the background); only a name never resolved waits,
            # within the resolver's own deadline, and fails as the checker's fault.
            family, address = (await self._resolver.addresses(self._host))[0]
            async with asyncio.timeout(self._timeout_s):
                # A bare transport rather than open_connection: no stream objects to build.
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, address, self._port, family=family
                )
            transport.close()
        except TimeoutError:
            reason = timeout_reason(self._timeout_s)
        except ConnectionRefusedError:
            reason = f"connect refused {self._where}"
        except socket.gaierror as exc:
            reason, fault = f"cannot resolve {self._host!r}: {exc.strerror}", checker_fault(exc)
        except OSError as exc:
            reason = f"connect to {self._where} failed: {exc.strerror or exc}"
            fault = checker_fault(exc)
        latency_s = time.monotonic() - start
        return ProbeResult(ok=not reason, latency_s=latency_s, reason=reason, checker=fault)
