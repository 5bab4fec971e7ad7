"""Connection hygiene for the control endpoint, on the listener itself (aiohttp has no such
options): at most `max_connections` at once (more are closed at once), a request head within
`head_timeout_s` of connecting, and no connection older than `lifetime_s`. Idle or slow clients
must never take the file descriptors the probes need (R36)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 5.0
LIFETIME_S = 30.0
KEEPALIVE_S = 5.0  # aiohttp's own idle keep-alive timeout, handed to its runner


class Guard:
    """The listener's protocol factory, around aiohttp's: counts and bounds connections."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        lifetime_s: float = LIFETIME_S,
    ) -> None:
        self.inner = inner
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self.lifetime_s = lifetime_s
        self.open = 0
        self.refused = 0  # connections closed at once: the cap was reached
        self.cut = 0  # connections closed for a late head or old age

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.tail = b""  # the last bytes seen, to find the end of a head split across reads
        self.head_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        if guard.open >= guard.max_connections:
            guard.refused += 1
            transport.abort()
            return
        guard.open += 1
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.timers = [
            loop.call_later(guard.head_timeout_s, self._late_head),
            loop.call_later(guard.lifetime_s, self._cut),
        ]
        self.inner = guard.inner()
        self.inner.connection_made(transport)

    def _late_head(self) -> None:
        if not self.head_seen:
            self._cut()

    def _cut(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.guard.cut += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.head_seen:
            seen = self.tail + data
            self.head_seen = b"\r\n\r\n" in seen
            self.tail = seen[-3:]
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        self.guard.open -= 1
        for timer in self.timers:
            timer.cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.SockSite):
    """aiohttp's SockSite, its connections through a Guard."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, guard_args: dict[str, Any]):
        super().__init__(runner, sock)
        self.guard: Guard | None = None
        self._guard_args = guard_args

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.guard = Guard(server, **self._guard_args)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard, sock=self._sock)
