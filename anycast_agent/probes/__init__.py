"""Probes: one configured check becomes one Probe; the factory owns what probes share."""

from __future__ import annotations

import os
import ssl
from types import TracebackType
from typing import Self, assert_never

import aiohttp

from anycast_agent.config import DnsCheck, ExecCheck, HttpCheck, TcpCheck
from anycast_agent.probes.base import CallbackProbe, Probe, is_callback_probe
from anycast_agent.probes.engine import Engine
from anycast_agent.probes.exec import ExecProbe, ambient_caps_prefix, probe_environment
from anycast_agent.probes.http import USER_AGENT, HttpProbe, LeanHttpProbe, lean_capable
from anycast_agent.probes.resolver import Resolver
from anycast_agent.probes.schedule import CallbackSchedule, run_schedule
from anycast_agent.probes.tcp import TcpProbe

__all__ = [
    "CallbackProbe",
    "CallbackSchedule",
    "Engine",
    "Probe",
    "ProbeFactory",
    "is_callback_probe",
    "run_schedule",
]


class ProbeFactory:
    """Builds probes from checks; owns the HTTP session (one connector for every HTTP target)
    and the TLS contexts, all closed on exit.

    Every HTTP probe opens a fresh connection unless its check asks for keep-alive, so a server
    that stops accepting connections fails its next check instead of hiding behind a pooled
    one. IP-literal http:// checks get the lean client (`LeanHttpProbe`), the rest aiohttp.
    """

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._verifying: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None
        self._exec_env: dict[str, str] | None = None
        # Lean probes may hold kept-alive sockets: closed on release and on exit.
        self._lean: set[LeanHttpProbe] = set()
        self._exec_prefix: tuple[str, ...] = ()
        self._engine: Engine | None = None
        self.resolver = resolver or Resolver()

    @property
    def engine(self) -> Engine:
        """The timers and epoll set the lean probes and their schedules share."""
        if self._engine is None:
            raise RuntimeError("ProbeFactory.engine used outside `async with`")
        return self._engine

    async def __aenter__(self) -> Self:
        self._engine = Engine()
        connector = aiohttp.TCPConnector(
            force_close=True,
            limit=0,
            enable_cleanup_closed=False,
            resolver=self.resolver,  # host names resolved off the probe path, kept on failure
            use_dns_cache=False,  # the resolver keeps them
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(),  # each probe enforces its own deadline
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # never go through a proxy from the environment
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for probe in self._lean:
            probe.close()
        self._lean.clear()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.resolver.close()

    def release(self, probe: Probe) -> None:
        """A probe that will not run again (its target was reloaded away): free its sockets."""
        if isinstance(probe, LeanHttpProbe) and probe in self._lean:
            self._lean.discard(probe)
            probe.close()

    def build(self, check: HttpCheck | TcpCheck | ExecCheck | DnsCheck, timeout_s: float) -> Probe:
        """One probe for one check; raises ValueError for a check no probe can run."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        match check:
            case HttpCheck():
                if self._session is None:
                    raise RuntimeError("ProbeFactory.build() called outside `async with`")
                if lean_capable(check.url):
                    lean = LeanHttpProbe(check, timeout_s, self._session, self.engine)
                    self._lean.add(lean)
                    return lean
                return HttpProbe(check, timeout_s, self._session, self._tls(check), self.resolver)
            case TcpCheck():
                return TcpProbe(check, timeout_s, self.resolver)
            case ExecCheck():
                if self._exec_env is None:
                    # Read once: nothing reads the environment or /proc after start.
                    self._exec_env = probe_environment(os.environ)
                    self._exec_prefix = ambient_caps_prefix()
                return ExecProbe(check, timeout_s, self._exec_env, self._exec_prefix)
            case DnsCheck():
                # dnspython (~2 MB resident) is imported by the first DNS target, if any.
                from anycast_agent.probes.dns import DnsProbe  # noqa: PLC0415

                return DnsProbe(check, timeout_s)
            case _:
                assert_never(check)

    def _tls(self, check: HttpCheck) -> ssl.SSLContext | None:
        if not check.url.startswith("https:"):
            return None
        if check.verify_tls:
            if self._verifying is None:
                self._verifying = ssl.create_default_context()
            return self._verifying
        if self._unverified is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._unverified = ctx
        return self._unverified
