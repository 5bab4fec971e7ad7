"""The DNS probe on dnspython: one recursion-desired query with EDNS over UDP (TCP when the
reply is truncated), healthy on a NOERROR reply with an answer."""

from __future__ import annotations

import asyncio
import socket
import time

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from anycast_agent.config import DnsCheck
from anycast_agent.model import CheckerFault, ProbeResult
from anycast_agent.probes.base import checker_fault, host_port, timeout_reason

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no fragmentation on any usual path
_BACKEND = dns.asyncbackend.get_backend("asyncio")


def question_name(name: str) -> dns.name.Name:
    """The name to ask for; raises ValueError for a name DNS cannot carry."""
    try:
        return dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"DNS name {name!r}: {exc}") from None


class DnsProbe:
    """Ask check.server for check.name/check.qtype from a fresh socket (a fresh port)."""

    __slots__ = ("_port", "_qname", "_qtype", "_server", "_subject", "_timeout_s", "_where")

    def __init__(self, check: DnsCheck, timeout_s: float) -> None:
        self._qname = question_name(check.name)
        self._qtype = dns.rdatatype.from_text(check.qtype)
        self._server, self._port = str(check.server), check.port
        self._where = host_port(self._server, check.port)
        self._subject = f"{check.name} {check.qtype}"
        self._timeout_s = timeout_s

    async def check(self) -> ProbeResult:
        query = dns.message.make_query(self._qname, self._qtype, use_edns=0, payload=EDNS_PAYLOAD)
        start = time.monotonic()
        sock = None
        try:
            async with asyncio.timeout(self._timeout_s):
                # A connected socket of our own: only that gets the ICMP "port unreachable"
                # that tells a dead DNS server from a slow one.
                destination = (self._server, self._port)
                family = dns.inet.af_for_address(self._server)
                sock = await _BACKEND.make_socket(  # type: ignore[no-untyped-call]
                    family, socket.SOCK_DGRAM, 0, None, destination
                )
                # A reply that is not the answer to this query (another id or question) is
                # ignored, and the wait goes on.
                reply, _ = await dns.asyncquery.udp_with_fallback(
                    query,
                    self._server,
                    port=self._port,
                    ignore_errors=True,
                    udp_sock=sock,
                    backend=_BACKEND,
                )
        except (TimeoutError, dns.exception.Timeout):
            return self._fail(start, timeout_reason(self._timeout_s))
        except ConnectionRefusedError:
            return self._fail(start, f"no DNS server at {self._where} (port unreachable)")
        except OSError as exc:
            why = f"cannot query {self._where}: {exc.strerror or exc}"
            return self._fail(start, why, checker_fault(exc))
        except dns.exception.DNSException as exc:  # a malformed TCP reply
            return self._fail(start, f"bad reply from {self._where}: {exc}")
        finally:
            if sock is not None:
                await sock.close()
        rcode = reply.rcode()
        if rcode != dns.rcode.NOERROR:
            return self._fail(start, f"{dns.rcode.to_text(rcode)} for {self._subject}")
        if not reply.answer:
            return self._fail(start, f"no answer for {self._subject}")
        return ProbeResult(ok=True, latency_s=time.monotonic() - start)

    @staticmethod
    def _fail(start: float, reason: str, fault: CheckerFault | None = None) -> ProbeResult:
        latency_s = time.monotonic() - start
        return ProbeResult(ok=False, latency_s=latency_s, reason=reason, checker=fault)
