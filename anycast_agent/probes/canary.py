"""The loopback canary: a TCP listener of the agent's own that it probes like a target.

When even this check fails, the agent cannot probe at all (no file descriptors, no memory, a
local firewall rule, a stalled loop), so every other failure is the checker's, not the edges'
(DESIGN §3.2a). A remote "known-good" target would be no such evidence: its failure together
with the edges usually means the PoP's own network is down.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from anycast_agent.config import TcpCheck
from anycast_agent.model import CheckerFault, ProbeResult
from anycast_agent.probes.base import checker_fault
from anycast_agent.probes.tcp import TcpProbe

INTERVAL_S = 1.0
TIMEOUT_S = 0.8


class _Hangup(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def canary_forever(report: Callable[[ProbeResult], None]) -> None:
    """Serve the canary on 127.0.0.1 (a free port) and report a check of it every second; a
    canary that cannot even be served is a failed check (and is tried again)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            server = await loop.create_server(_Hangup, "127.0.0.1", 0, family=socket.AF_INET)
        except OSError as exc:
            fault = checker_fault(exc) or CheckerFault.CANARY
            report(ProbeResult(False, 0.0, f"cannot serve the canary: {exc}", checker=fault))
            await asyncio.sleep(INTERVAL_S)
            continue
        try:
            port = server.sockets[0].getsockname()[1]
            probe = TcpProbe(TcpCheck(host="127.0.0.1", port=port), TIMEOUT_S)
            while True:
                report(await probe.check())
                await asyncio.sleep(INTERVAL_S)
        finally:
            server.close()
