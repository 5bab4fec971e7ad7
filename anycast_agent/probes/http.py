"""The HTTP(S) probe: one request per check, judged by status, body and load figure."""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import BasicAuth
from yarl import URL

from anycast_agent.config import HttpCheck
from anycast_agent.model import CheckerFault, ProbeResult
from anycast_agent.probes.base import checker_fault, host_port, timeout_reason
from anycast_agent.probes.engine import Engine
from anycast_agent.probes.http_lean import ConnectError, Connection, build_request
from anycast_agent.probes.http_parse import BadResponse, Outcome, Response, ServerClosed
from anycast_agent.probes.resolver import Resolver, is_address

# Enough for a health page or a status document; a probe must never buffer a whole download.
BODY_LIMIT = 64 * 1024
USER_AGENT = "anycast-agent"
# With keep-alive on, a fresh connection at least this often (see http_lean.Connection).
KEEPALIVE_MAX_REUSES = 30

log = logging.getLogger(__name__)


class _Judge:
    """What an HTTP check accepts (status, body) and the load figure it reads."""

    __slots__ = ("_body_re", "_expect", "_expect_text", "_json_path", "_load_header", "_read_body")

    def __init__(self, check: HttpCheck) -> None:
        self._expect, self._expect_text = _expected(check.expect_status)
        self._body_re = re.compile(check.body_regex) if check.body_regex is not None else None
        # Lower case: the lean client's header names are, aiohttp's lookups ignore case.
        self._load_header = check.load_header.lower() if check.load_header is not None else None
        self._json_path = (
            tuple(check.load_json_field.split(".")) if check.load_json_field is not None else None
        )
        self._read_body = check.method == "GET" and (
            self._body_re is not None or self._json_path is not None
        )

    def status(self, status: int) -> str:
        return "" if status in self._expect else f"status {status} not in {self._expect_text}"

    def body(self, body: bytes) -> str:
        if self._body_re is not None and not self._body_re.search(body.decode("utf-8", "replace")):
            return f"body does not match /{_shorten(self._body_re.pattern)}/"
        return ""

    def load(self, headers: Mapping[str, str], body: bytes) -> float | None:
        if self._load_header is not None:
            return parse_load(headers.get(self._load_header))
        if self._json_path is not None:
            return json_load(body, self._json_path)
        return None


@functools.lru_cache(maxsize=64)
def _expected(statuses: tuple[int, ...]) -> tuple[frozenset[int], str]:
    """The status set and its text, shared by the checks that expect the same statuses (most
    expect [200]): a frozenset per target weighed 0.4 MB at 2,000 targets."""
    return frozenset(statuses), "[" + ", ".join(str(s) for s in statuses) + "]"


class HttpProbe(_Judge):
    """GET or HEAD `check.url` through the shared aiohttp session (always a fresh connection):
    the path for HTTPS and host names. IP-literal http:// URLs go to `LeanHttpProbe`."""

    __slots__ = ("_headers", "_method", "_resolver", "_server_hostname", "_session", "_ssl",
                 "_timeout_s", "_url", "_where")  # fmt: skip

    def __init__(
        self,
        check: HttpCheck,
        timeout_s: float,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None,
        resolver: Resolver | None = None,
    ) -> None:
        super().__init__(check)
        self._resolver = resolver
        self._session = session
        self._timeout_s = timeout_s
        self._method = check.method
        self._url = URL(check.url)
        self._where = host_port(self._url.raw_host or "", self._url.port or 0)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._server_hostname = check.server_name
        self._headers = {"Host": check.host} if check.host is not None else None

    async def check(self) -> ProbeResult:
        start = time.monotonic()
        fault = None
        host = self._url.raw_host or ""
        if self._resolver is not None and not is_address(host):
            # Known at once; a name never resolved waits the resolver's own deadline, outside
            # the check's timeout, and fails as the checker's fault, never the target's.
            try:
                await self._resolver.addresses(host)
            except OSError as exc:
                why = f"cannot resolve {host!r}: {exc.strerror or exc}"
                return ProbeResult(False, time.monotonic() - start, why, checker=checker_fault(exc))
        try:
            async with asyncio.timeout(self._timeout_s):
                reason, load = await self._request()
        except TimeoutError:
            reason, load = timeout_reason(self._timeout_s), None
        except aiohttp.ClientError as exc:
            reason, load = self._describe(exc), None
            cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
            fault = checker_fault(cause)
        except OSError as exc:
            reason, load = f"connection to {self._where} failed: {exc.strerror or exc}", None
            fault = checker_fault(exc)
        latency_s = time.monotonic() - start
        return ProbeResult(not reason, latency_s, reason, load, checker=fault)

    async def _request(self) -> tuple[str, float | None]:
        async with self._session.request(
            self._method,
            self._url,
            headers=self._headers,
            ssl=self._ssl,
            server_hostname=self._server_hostname,
            allow_redirects=False,
        ) as resp:
            if reason := self.status(resp.status):
                return reason, None
            body = await _read_head(resp.content, BODY_LIMIT) if self._read_body else b""
        if reason := self.body(body):
            return reason, None
        return "", self.load(resp.headers, body)

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


class LeanHttpProbe(_Judge):
    """GET or HEAD an IP-literal http:// URL (the usual edge check) through the lean client
    (`http_lean`): a fresh connection per check unless `check.keepalive`. A CallbackProbe: the
    agent runs it from loop timers, with no coroutine per check."""

    __slots__ = ("_checks", "_conn", "_done", "_engine", "_head_only", "_logged", "_request",
                 "_session", "_started", "_timeout_s", "_where")  # fmt: skip

    def __init__(
        self, check: HttpCheck, timeout_s: float, session: aiohttp.ClientSession, engine: Engine
    ) -> None:
        super().__init__(check)
        self._engine = engine
        url = URL(check.url)
        host, port = url.raw_host or "", url.port or 80
        self._session = session  # only to notice that the factory owning the probe has exited
        self._timeout_s = timeout_s
        self._where = host_port(host, port)
        self._head_only = check.method == "HEAD"
        self._conn = Connection(
            engine,
            host,
            port,
            keepalive=check.keepalive,
            need_headers=self._load_header is not None,
            body_limit=BODY_LIMIT,
            max_reuses=KEEPALIVE_MAX_REUSES,
        )
        # As aiohttp sends them: host[:port] as written, and credentials in the URL as Basic
        # authorization (never in the Host header).
        basic = BasicAuth.from_url(url)
        self._request = build_request(
            check.method,
            url.raw_path_qs,
            check.host if check.host is not None else url.host_port_subcomponent or host,
            USER_AGENT,
            check.keepalive,
            basic.encode() if basic is not None else None,
        )
        self._done: Callable[[ProbeResult], None] | None = None
        self._checks = 0  # numbers each check, so a deadline knows whether it is still current
        self._started = 0.0
        self._logged = False

    async def check(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[ProbeResult] = loop.create_future()

        def done(r: ProbeResult) -> None:
            if not result.done():
                result.set_result(r)

        self.start(done)
        try:
            return await result
        finally:
            self.abort()

    def start(self, done: Callable[[ProbeResult], None]) -> None:
        if self._session.closed:
            self._conn.close()
            raise RuntimeError("Session is closed")
        if self._done is not None:
            raise RuntimeError(f"a check of {self._where} is already in flight")
        self._done = done
        self._checks += 1
        self._started = self._engine.time()
        self._engine.call_at(self._started + self._timeout_s, self._on_deadline, self._checks)
        self._conn.start(
            self._request,
            need_body=self._read_body,
            head_only=self._head_only,
            done=self._on_outcome,
        )

    def abort(self) -> None:
        if self._done is not None:
            self._done = None
            self._conn.abort()

    def close(self) -> None:
        """Close a kept-alive connection (the factory that built the probe calls this on exit;
        without it the socket lives until the probe is collected)."""
        self.abort()
        self._conn.close()

    def _on_deadline(self, check: int) -> None:
        if check != self._checks or self._done is None:
            return  # that check ended in time
        self._conn.abort()
        self._report(timeout_reason(self._timeout_s), None)

    def _on_outcome(self, outcome: Outcome) -> None:
        load, fault, bug = None, None, False
        try:
            if isinstance(outcome, Response):
                reason = self.status(outcome.status) or self.body(outcome.body)
                if not reason:
                    load = self.load(outcome.headers, outcome.body)
            else:
                reason, fault = self._describe(outcome), checker_fault(outcome)
                bug = not isinstance(outcome, OSError | ServerClosed | BadResponse)
        except Exception as exc:  # a bug judging the response: this check fails, now
            reason, load, bug = self._describe(exc), None, True
        self._report(reason, load, fault, bug)

    def _report(
        self, reason: str, load: float | None, fault: CheckerFault | None = None, bug: bool = False
    ) -> None:
        done = self._done
        self._done = None
        if done is None:
            return
        latency_s = self._engine.time() - self._started
        done(ProbeResult(not reason, latency_s, reason, load, checker=fault, bug=bug))

    def _describe(self, exc: Exception) -> str:
        match exc:
            case ConnectError(errno=errno.ECONNREFUSED):
                return f"connect refused {self._where}"
            case ConnectError():
                return f"connect to {self._where} failed: {exc.strerror or exc}"
            case ServerClosed():
                return f"{self._where} closed the connection without a response"
            case BadResponse():
                return f"bad HTTP response from {self._where}: {exc}"
            case OSError():
                return f"connection to {self._where} failed: {exc.strerror or exc}"
        if not self._logged:  # a bug in the client: fail the target, say so once
            log.error("probe of %s failed unexpectedly", self._where, exc_info=exc)
            self._logged = True
        return f"probe error: {exc!r}"


async def _read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is left unread (the connection is not reused)."""
    data = await content.read(limit)
    if len(data) >= limit or not data:
        return data
    buf = bytearray(data)
    while len(buf) < limit and (chunk := await content.read(limit - len(buf))):
        buf += chunk
    return bytes(buf)


def lean_capable(url: str) -> bool:
    """Whether `LeanHttpProbe` can check `url`: plain http:// to an IP literal."""
    parsed = URL(url)
    try:
        ipaddress.ip_address(parsed.raw_host or "")
    except ValueError:
        return False
    return parsed.scheme == "http"


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
    except (ValueError, RecursionError):  # also UnicodeDecodeError, a cut body, deep nesting
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
