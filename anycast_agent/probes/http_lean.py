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
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from anycast_agent.probes.engine import READ, WRITE, Engine

HEAD_LIMIT = 16 * 1024
RECV_SIZE = 64 * 1024
_UNTIL_CLOSE = -1
_CHUNKED = -2
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)
_LINGER_RESET = struct.pack("ii", 1, 0)  # on, 0 s: close() sends RST, leaves no TIME_WAIT


class ServerClosed(Exception):
    """The server closed the connection before a complete response head arrived."""


class BadResponse(Exception):
    """The bytes the server sent are not an HTTP/1.x response; the message says what is wrong."""


class ConnectError(OSError):
    """Opening the connection failed (as opposed to a failure on an open connection)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; empty unless asked for
    body: bytes  # at most body_limit bytes; empty unless asked for


Outcome = Response | Exception  # what one exchange ends with


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


class ResponseParser:
    """Accumulates response bytes; `feed` returns the Response once enough has arrived."""

    __slots__ = (
        "_body_len",
        "_body_limit",
        "_body_start",
        "_buf",
        "_close",
        "_head_only",
        "_headers",
        "_need_body",
        "_need_headers",
        "_status",
        "reusable",
    )

    def __init__(self, *, need_body: bool, need_headers: bool, head_only: bool, limit: int) -> None:
        self._need_body = need_body
        self._need_headers = need_headers
        self._head_only = head_only
        self._body_limit = limit
        self._buf = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body_start = -1
        self._body_len = 0
        self._close = False
        self.reusable = False  # true once a response was read exactly to its end

    @property
    def started(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> Response | None:
        self._buf += data
        if self._body_start < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > HEAD_LIMIT:
                    raise BadResponse(f"response head longer than {HEAD_LIMIT} bytes")
                return None
            self._parse_head(bytes(self._buf[:end]))
            self._body_start = end + 4
            if not self._need_body:
                return self._done(b"", complete=False)
        body = self._buf[self._body_start :]
        limit = self._body_limit
        if self._body_len == _CHUNKED:
            decoded, complete = dechunk(body)
            if complete or len(decoded) >= limit:
                return self._done(decoded[:limit], complete=complete)
        elif self._body_len == _UNTIL_CLOSE:
            if len(body) >= limit:
                return self._done(bytes(body[:limit]), complete=False)
        elif len(body) >= self._body_len:
            keep = min(self._body_len, limit)
            return self._done(bytes(body[:keep]), complete=len(body) == self._body_len)
        elif len(body) >= limit:
            return self._done(bytes(body[:limit]), complete=False)
        return None

    def eof(self) -> Response:
        """The server closed its side: the response if it is complete, else raise."""
        if self._body_start < 0:
            raise ServerClosed()
        if self._body_len == _UNTIL_CLOSE:
            return self._done(bytes(self._buf[self._body_start :][: self._body_limit]), False)
        raise BadResponse("connection closed in the middle of the body")

    def _done(self, body: bytes, complete: bool) -> Response:
        self.reusable = complete and not self._close
        return Response(self._status, self._headers, body)

    def _parse_head(self, head: bytes) -> None:
        eol = head.find(b"\r\n")
        status_line, fields = (head, b"") if eol < 0 else (head[:eol], head[eol:])
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BadResponse(f"invalid status line {printable(status_line)!r}")
        self._status = int(parts[1])
        if not 100 <= self._status <= 599:
            raise BadResponse(f"invalid status code {self._status}")
        if not (self._need_body or self._need_headers):
            return
        if _FIELDS.fullmatch(fields) is None:
            lines = fields.split(b"\r\n")[1:]
            bad = next((line for line in lines if _LINE.fullmatch(line) is None), fields)
            raise BadResponse(f"invalid header line {printable(bad)!r}")
        if self._need_headers:
            headers = {
                name.strip().lower().decode("latin-1"): value.strip().decode("latin-1")
                for name, value in _FIELD.findall(fields)
            }
            self._headers = headers
        else:  # only the framing fields, found without splitting every line (keep-alive checks)
            headers = _framing(fields)
        if self._head_only or self._status in (204, 304) or self._status < 200:
            self._body_len = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._body_len = _CHUNKED
        elif (length := headers.get("content-length")) is not None:
            if not (length.isascii() and length.isdigit()):  # "²" is a digit to isdigit()
                raise BadResponse(f"invalid Content-Length {printable(length.encode())!r}")
            self._body_len = int(length)
        else:
            self._body_len = _UNTIL_CLOSE
        self._close = "close" in headers.get("connection", "").lower()


# Header fields after the status line: CRLF name ":" value, repeated; a line that starts with
# white space (obs-fold) is refused, as RFC 9112 lets a client do.
_FIELDS = re.compile(rb"(?:\r\n[^\s:][^\r\n:]*:[^\r\n]*)*")
_LINE = re.compile(rb"[^\s:][^\r\n:]*:[^\r\n]*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FIELD = re.compile(rb"\r\n([^\r\n:]+):([^\r\n]*)")
_FRAMING = (b"transfer-encoding", b"content-length", b"connection")


def _framing(fields: bytes) -> dict[str, str]:
    """The fields that frame the body, by lower-case name; the last of a repeated one, as the
    full parse (a dict of every field) reads it."""
    low = fields.lower()
    found: dict[str, str] = {}
    for name in _FRAMING:
        at = low.rfind(b"\r\n" + name)
        while at >= 0:
            start = at + 2 + len(name)
            end = low.find(b"\r\n", start)
            value = fields[start : len(fields) if end < 0 else end]
            if value.lstrip(b" \t").startswith(b":"):  # not a longer name such as Connection-X
                found[name.decode()] = value.strip().lstrip(b":").strip().decode("latin-1")
                break
            at = low.rfind(b"\r\n" + name, 0, at)
    return found


def dechunk(data: bytearray | bytes) -> tuple[bytes, bool]:
    """The body decoded so far from chunked transfer coding, and whether it is complete."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size_text = bytes(data[pos:eol]).split(b";", 1)[0].strip()
        # Hex digits only: int() would also take "-6" (which walked this loop backwards for
        # ever), "+6", "0x6" and "6_0".
        if _HEX.fullmatch(size_text) is None:
            raise BadResponse(f"invalid chunk size {printable(size_text)!r}")
        size = int(size_text, 16)
        if size == 0:  # the last chunk; (rare) trailers end with an empty line
            return bytes(out), data.find(b"\r\n\r\n", eol) >= 0
        start = eol + 2
        if len(data) < start + size + 2:
            out += data[start:]
            return bytes(out), False
        out += data[start : start + size]
        pos = start + size + 2


def printable(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("latin-1")
    return "".join(c if c.isprintable() else "?" for c in text)


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
