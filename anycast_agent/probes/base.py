"""The contract every probe keeps: one check in, one ProbeResult out, failures as values."""

from __future__ import annotations

from typing import Protocol

from anycast_agent.model import ProbeResult


class Probe(Protocol):
    """One health check against one target, built once and run every interval.

    `check` enforces the timeout given at construction and never raises for an expected
    failure (refused, reset, timeout, bad status, TLS or DNS error, non-zero exit): those
    come back as `ProbeResult(ok=False, reason=...)`. `asyncio.CancelledError` always
    propagates; any other exception is a bug and may propagate.
    """

    async def check(self) -> ProbeResult: ...


def timeout_reason(timeout_s: float) -> str:
    return f"timeout after {timeout_s:g}s"


def host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 literal so the port stays readable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
