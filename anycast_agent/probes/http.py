"""The HTTP(S) probe: one request on a fresh connection, judged by status, body and load figure."""

from __future__ import annotations

import asyncio
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

# Enough for a health page or a status document; a probe must never buffer a whole download.
BODY_LIMIT = 64 * 1024


class HttpProbe:
    """GET or HEAD `check.url` through a shared session; nothing is allocated per check but the
    request itself."""

    __slots__ = (
        "_body_re",
        "_expect",
        "_expect_text",
        "_headers",
        "_json_path",
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

    async def check(self) -> ProbeResult:
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
