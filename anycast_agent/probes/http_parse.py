"""Parsing a health check's HTTP/1.x response, bounded and linear in what arrives: a 16 KiB
head, a 64-byte chunk-size line, the body up to the probe's limit (R36: a broken or hostile
edge must not eat the agent's memory or CPU)."""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_LIMIT = 16 * 1024
CHUNK_LINE_LIMIT = 64  # a chunk-size line: hex digits and perhaps an extension
_UNTIL_CLOSE = -1
_CHUNKED = -2


class ServerClosed(Exception):
    """The server closed the connection before a complete response head arrived."""


class BadResponse(Exception):
    """The bytes the server sent are not an HTTP/1.x response; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; empty unless asked for
    body: bytes  # at most body_limit bytes; empty unless asked for


Outcome = Response | Exception  # what one exchange ends with


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
            # Tiny chunks cost framing: past twice the limit, what is decoded is what is judged
            # (bounded memory, and no rescanning of an ever-growing buffer).
            if complete or len(decoded) >= limit or len(body) > 2 * limit + HEAD_LIMIT:
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
        eol = data.find(b"\r\n", pos, pos + CHUNK_LINE_LIMIT + 2)
        if eol < 0:
            if len(data) - pos > CHUNK_LINE_LIMIT:
                raise BadResponse(f"chunk-size line longer than {CHUNK_LINE_LIMIT} bytes")
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
