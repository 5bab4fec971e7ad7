"""Who may change routes: the bearer token check, and refusals as JSON errors."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping

from aiohttp import web

REALM = "anycast-agent"


class ApiError(Exception):
    """A refused request, rendered as `{"error": ..., "detail": ...}` with its status."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, error: str, detail: object = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def authenticate(token: str | None, header: str) -> str:
    """Check a mutating request's Authorization `header`; the caller's identity (the default
    author) or ApiError 401."""
    if token is None:
        # No token file: config only allows this on loopback or a unix socket, where reaching
        # the endpoint already means being on the router (socket mode 0660 for unix:).
        return "local"
    scheme, _, given = header.partition(" ")
    if not header:
        raise ApiError(
            401,
            "authorization required",
            "send Authorization: Bearer <token>",
            {"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    ):
        raise ApiError(
            401,
            "invalid token",
            None,
            {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
        )
    return "token"


def host_of(header: str) -> str:
    """The host part of a Host header, lower-case, without the port ("[::1]:9179" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def refuse_browsers(headers: Mapping[str, str], allowed_hosts: frozenset[str] | None) -> None:
    """A browser page must never reach the endpoint (R34): a request carrying an Origin (every
    browser sends one on a cross-site or scripted POST) or a Host outside `allowed_hosts` (DNS
    rebinding: the page's own name pointing at 127.0.0.1) is refused 403. `allowed_hosts`
    None: a unix socket, which no browser can address."""
    if "Origin" in headers:
        raise ApiError(403, "cross-origin requests are refused", {"origin": headers["Origin"]})
    if allowed_hosts is not None and host_of(headers.get("Host", "")) not in allowed_hosts:
        raise ApiError(403, "unknown Host", {"host": headers.get("Host", "")})


class TokenBucket:
    """At most `burst` changes at once, refilled at `rate_per_s` (R35): a storm of valid,
    authenticated calls is answered 429 instead of flapping routes."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> None:
        """One change, or ApiError 429 saying when to retry."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens < 1:
            wait = math.ceil((1 - self.tokens) / self.rate_per_s)
            raise ApiError(429, "too many changes", {"retry_after_s": wait},
                           {"Retry-After": str(wait)})  # fmt: skip
        self.tokens -= 1
