"""The HTTP(S) probe: one request per check, judged by status, body and load figure."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import math
import re
import ssl
import time
from collections.abc import Mapping

import aiohttp
from yarl import URL

from anycast_agent.config import HttpCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes.base import host_port, timeout_reason
from anycast_agent.probes.http_lean import (
    BadResponse,
    ConnectError,
    Connection,
    ServerClosed,
    build_request,
)

# Enough for a health page or a status document; a probe must never buffer a whole download.
BODY_LIMIT = 64 * 1024
USER_AGENT = "anycast-agent"
# With keep-alive on, a fresh connection at least this often (see http_lean.Connection).
KEEPALIVE_MAX_REUSES = 30


class HttpProbe:
    """GET or HEAD `check.url`; nothing is allocated per check but the request itself.

    A plain-HTTP URL whose host is an IP literal (the usual edge check) goes through the lean
    client (`http_lean`), fresh connection per check unless `check.keepalive`; HTTPS and host
    names go through the shared aiohttp session (always a fresh connection).
    """

    __slots__ = (
        "_body_re",
        "_expect",
        "_expect_text",
        "_headers",
        "_json_path",
        "_lean",
        "_lean_request",
        "_load_header",
        "_method",
        "_read_body",
        "_server_hostname",
        "_session",
        "_ssl",
        "_timeout_s",
        "_url",
        "_where",
    )

    def __init__(
        self,
        check: HttpCheck,
        timeout_s: float,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._session = session
        self._timeout_s = timeout_s
        self._method = check.method
        self._url = URL(check.url)
        self._where = host_port(self._url.raw_host or "", self._url.port or 0)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._server_hostname = check.server_name
        self._headers = {"Host": check.host} if check.host is not None else None
        self._expect = frozenset(check.expect_status)
        self._expect_text = "[" + ", ".join(str(s) for s in check.expect_status) + "]"
        self._body_re = re.compile(check.body_regex) if check.body_regex is not None else None
        self._load_header = check.load_header
        self._json_path = (
            tuple(check.load_json_field.split(".")) if check.load_json_field is not None else None
        )
        self._read_body = check.method == "GET" and (
            self._body_re is not None or self._json_path is not None
        )
        self._lean: Connection | None = None
        self._lean_request = b""
        host = self._url.raw_host or ""
        if self._url.scheme == "http" and _is_ip(host):
            self._lean = Connection(
                host,
                self._url.port or 80,
                keepalive=check.keepalive,
                need_headers=self._load_header is not None,
                body_limit=BODY_LIMIT,
                max_reuses=KEEPALIVE_MAX_REUSES,
            )
            default_host = self._url.raw_authority  # what aiohttp sends: host[:port] as written
            self._lean_request = build_request(
                check.method,
                self._url.raw_path_qs,
                check.host if check.host is not None else default_host,
                USER_AGENT,
                check.keepalive,
            )

    async def check(self) -> ProbeResult:
        if self._lean is not None:
            return await self._check_lean(self._lean)
        start = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                reason, load = await self._request()
        except TimeoutError:
            reason, load = timeout_reason(self._timeout_s), None
        except aiohttp.ClientError as exc:
            reason, load = self._describe(exc), None
        except OSError as exc:
            reason, load = f"connection to {self._where} failed: {exc.strerror or exc}", None
        return ProbeResult(
            ok=not reason, latency_s=time.monotonic() - start, reason=reason, load=load
        )

    def close(self) -> None:
        """Close a kept-alive connection (the factory that built the probe should call this on
        exit; without it the socket lives until the probe is collected)."""
        if self._lean is not None:
            self._lean.close()

    async def _check_lean(self, conn: Connection) -> ProbeResult:
        if self._session.closed:  # the factory that owns every HTTP probe has exited
            conn.close()
            raise RuntimeError("Session is closed")
        start = time.monotonic()
        load = None
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await conn.exchange(
                    self._lean_request, need_body=self._read_body, head_only=self._method == "HEAD"
                )
        except TimeoutError:
            reason = timeout_reason(self._timeout_s)
        except ConnectError as exc:
            if exc.errno == errno.ECONNREFUSED:
                reason = f"connect refused {self._where}"
            else:
                reason = f"connect to {self._where} failed: {exc.strerror or exc}"
        except ServerClosed:
            reason = f"{self._where} closed the connection without a response"
        except BadResponse as exc:
            reason = f"bad HTTP response from {self._where}: {exc}"
        except OSError as exc:
            reason = f"connection to {self._where} failed: {exc.strerror or exc}"
        else:
            reason = self._judge(resp.status, resp.body)
            if not reason:
                if self._load_header is not None:
                    load = parse_load(resp.headers.get(self._load_header.lower()))
                elif self._json_path is not None:
                    load = json_load(resp.body, self._json_path)
        return ProbeResult(
            ok=not reason, latency_s=time.monotonic() - start, reason=reason, load=load
        )

    def _judge(self, status: int, body: bytes) -> str:
        if status not in self._expect:
            return f"status {status} not in {self._expect_text}"
        if self._body_re is not None and not self._body_re.search(body.decode("utf-8", "replace")):
            return f"body does not match /{_shorten(self._body_re.pattern)}/"
        return ""

    async def _request(self) -> tuple[str, float | None]:
        async with self._session.request(
            self._method,
            self._url,
            headers=self._headers,
            ssl=self._ssl,
            server_hostname=self._server_hostname,
            allow_redirects=False,
        ) as resp:
            if resp.status not in self._expect:
                return f"status {resp.status} not in {self._expect_text}", None
            body = await _read_head(resp.content, BODY_LIMIT) if self._read_body else b""
        if self._body_re is not None and not self._body_re.search(body.decode("utf-8", "replace")):
            return f"body does not match /{_shorten(self._body_re.pattern)}/", None
        load = None
        if self._load_header is not None:
            load = parse_load(resp.headers.get(self._load_header))
        elif self._json_path is not None:
            load = json_load(body, self._json_path)
        return "", load

    def _describe(self, exc: aiohttp.ClientError) -> str:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            detail = getattr(cert_error, "verify_message", None) or str(cert_error)
            return f"TLS certificate of {self._where} rejected: {detail}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
            return f"TLS handshake with {self._where} failed: {exc}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            if isinstance(exc.os_error, ConnectionRefusedError):
                return f"connect refused {self._where}"
            return f"connect to {self._where} failed: {exc.os_error.strerror or exc.os_error}"
        if isinstance(exc, aiohttp.ClientOSError):
            return f"connection to {self._where} failed: {exc.strerror or exc}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return f"{self._where} closed the connection without a response"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"bad HTTP response from {self._where}: {exc.message}"
        return f"request to {self._where} failed: {type(exc).__name__}: {exc}"


async def _read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is left unread (the connection is not reused)."""
    data = await content.read(limit)
    if len(data) >= limit or not data:
        return data
    buf = bytearray(data)
    while len(buf) < limit and (chunk := await content.read(limit - len(buf))):
        buf += chunk
    return bytes(buf)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_load(value: object) -> float | None:
    """A load figure clamped to 0..1, or None when it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        load = float(value)
    except ValueError:
        return None
    if not math.isfinite(load):
        return None
    return min(1.0, max(0.0, load))


def json_load(body: bytes, path: tuple[str, ...]) -> float | None:
    """The load figure at a dotted path (`stats.load`, `backends.0.load`) in a JSON body."""
    try:
        node: object = json.loads(body)
    except ValueError:  # also UnicodeDecodeError and a body cut at BODY_LIMIT
        return None
    for part in path:
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return parse_load(node)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
