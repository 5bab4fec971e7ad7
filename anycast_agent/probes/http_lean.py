"""A lean HTTP/1.1 client for health checks: one exchange at a time on a raw non-blocking socket.

Health checks ask little of HTTP, so this client skips what a general client pays for per
request: no pool, no resolver (an IP literal), no transport, cookie or redirect machinery, no
header objects unless one is wanted, no task, future or coroutine: the probe engine's readiness
callbacks drive the socket. At 1,000 targets aiohttp's machinery was half the agent's CPU.

`Connection` holds at most one socket. With `keepalive` off it opens a fresh connection for
every exchange and asks the server to close it. With `keepalive` on it reuses the connection
while the server keeps it open and each response was read to its end, and opens a fresh one at
least every `max_reuses` exchanges, so a server that stops accepting new connections is still
detected (after at most `max_reuses` + fall probes).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

from anycast_agent.probes.engine import READ, WRITE, Engine
from anycast_agent.probes.http_parse import BadResponse, Outcome, ResponseParser, ServerClosed

RECV_SIZE = 64 * 1024
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)
_LINGER_RESET = struct.pack("ii", 1, 0)  # on, 0 s: close() sends RST, leaves no TIME_WAIT


class ConnectError(OSError):
    """Opening the connection failed (as opposed to a failure on an open connection)."""


def build_request(
    method: str,
    target: str,
    host: str,
    user_agent: str,
    keepalive: bool,
    authorization: str | None = None,
) -> bytes:
    """The request bytes, built once per probe (they never change between exchanges)."""
    connection = "keep-alive" if keepalive else "close"
    auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
    text = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n"
        f"Accept: */*\r\n{auth}Connection: {connection}\r\n\r\n"
    )
    return text.encode("ascii")


class Connection:
    """HTTP/1.1 exchanges with one address, one at a time (a probe never overlaps its checks),
    driven by loop callbacks alone: `start` begins an exchange and `done` gets its outcome.

    A kept-alive socket stays registered for reading between exchanges, so a server that
    closes an idle connection is noticed (and the socket dropped) as it happens, without a
    syscall per exchange to ask. Fresh connections are closed with a reset (SO_LINGER 0), as
    HAProxy closes its health checks: neither end keeps a TIME_WAIT entry per probe.
    """

    __slots__ = (
        "_addr",
        "_body_limit",
        "_connecting",
        "_done",
        "_engine",
        "_family",
        "_head_only",
        "_keepalive",
        "_max_reuses",
        "_need_body",
        "_need_headers",
        "_parser",
        "_request",
        "_reused",
        "_sock",
        "_uses",
    )

    def __init__(
        self,
        engine: Engine,
        address: str,
        port: int,
        *,
        keepalive: bool,
        need_headers: bool,
        body_limit: int,
        max_reuses: int = 30,
    ) -> None:
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._addr = (address, port)
        self._keepalive = keepalive
        self._need_headers = need_headers
        self._body_limit = body_limit
        self._max_reuses = max_reuses
        self._sock: socket.socket | None = None
        self._uses = 0
        self._engine = engine
        self._connecting = False
        self._done: Callable[[Outcome], None] | None = None
        self._parser: ResponseParser | None = None
        self._request = b""
        self._need_body = False
        self._head_only = False
        self._reused = False

    def start(
        self,
        request: bytes,
        *,
        need_body: bool,
        head_only: bool,
        done: Callable[[Outcome], None],
    ) -> None:
        """Send `request` and read the response; `done` gets the Response or the exception
        (ConnectError, OSError, ServerClosed or BadResponse), exactly once, unless `abort`
        comes first. On any failure the socket is closed.

        A kept connection that fails before any response byte arrives is retried once on a
        fresh connection (the server may close an idle connection just as the request goes
        out)."""
        if self._done is not None:
            raise RuntimeError("an exchange is already in flight on this connection")
        self._done = done
        self._request = request
        self._need_body = need_body or self._keepalive
        self._head_only = head_only
        self._reused = self._sock is not None and self._uses < self._max_reuses
        if self._sock is not None and not self._reused:
            self.close()
        try:
            if self._sock is None:
                self._connect()
            else:
                self._send()
        except Exception as exc:
            self._fail(exc)

    def abort(self) -> None:
        """Give up the exchange in flight (if any): its socket is closed, `done` never called."""
        if self._done is not None:
            self._done = None
            self._parser = None
            self.close()

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._connecting = False
            self._engine.unwatch(sock.fileno())
            sock.close()

    def _connect(self) -> None:
        # Non-blocking from birth: one syscall fewer than setblocking(False) after it.
        sock = socket.socket(self._family, _STREAM_NONBLOCK)
        if not self._keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._sock = sock
        self._uses = 0
        err = sock.connect_ex(self._addr)
        if err in _IN_PROGRESS:
            # A nearby server often completes the handshake within the connect call itself:
            # asking again costs one syscall, waiting for writability costs a poll round.
            err = sock.connect_ex(self._addr)
            if err == errno.EISCONN:
                err = 0
        if err in _IN_PROGRESS or err == errno.EALREADY:
            self._connecting = True
            self._engine.watch(sock.fileno(), WRITE, self._on_event)
            return
        if err:
            raise ConnectError(err, os.strerror(err))
        self._engine.watch(sock.fileno(), READ, self._on_event)
        self._send()

    def _on_event(self, events: int) -> None:
        if self._connecting:
            self._on_connected()
        else:
            self._on_readable()

    def _on_connected(self) -> None:
        sock = self._sock
        assert sock is not None
        self._connecting = False
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ConnectError(err, os.strerror(err))
            self._engine.rewatch(sock.fileno(), READ)
            self._send()
        except Exception as exc:
            self._fail(exc)

    def _send(self) -> None:
        sock = self._sock
        assert sock is not None
        self._uses += 1
        self._parser = ResponseParser(
            need_body=self._need_body,
            need_headers=self._need_headers,
            head_only=self._head_only,
            limit=self._body_limit,
        )
        request = self._request
        sent = sock.send(request)
        if sent != len(request):  # a request is a few hundred bytes: a short send means trouble
            raise BadResponse(f"could only send {sent} of {len(request)} request bytes")

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        parser = self._parser
        if parser is None:  # idle kept connection: the server closed it or sent unasked bytes
            self.close()
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        try:
            response = parser.feed(data) if data else parser.eof()
        except Exception as exc:  # BadResponse, ServerClosed, or a bug: the check fails now
            self._fail(exc)
            return
        if response is None:
            return
        self._parser = None
        if not (self._keepalive and parser.reusable):
            self.close()
        self._finish(response)

    def _fail(self, exc: Exception) -> None:
        parser = self._parser
        self._parser = None
        self.close()
        if (
            self._reused
            and isinstance(exc, ServerClosed | ConnectionResetError | BrokenPipeError)
            and (parser is None or not parser.started)
        ):
            self._reused = False
            try:
                self._connect()
            except Exception as again:
                self._fail(again)
            return
        self._finish(exc)

    def _finish(self, outcome: Outcome) -> None:
        done = self._done
        self._done = None
        if done is not None:
            done(outcome)
