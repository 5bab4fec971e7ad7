"""The DNS probe: one recursive-desired UDP query, healthy on a NOERROR reply with an answer."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass

from anycast_agent.config import DnsCheck
from anycast_agent.model import CheckerFault, ProbeResult
from anycast_agent.probes.base import checker_fault, host_port, timeout_reason

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16, "AAAA": 28}
RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
CLASS_IN = 1
FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
_HEADER = struct.Struct("!6H")

# Query ids only need to tell our reply from a stray one on a loopback or PoP-local path.
_ids = random.Random()


def encode_question(name: str, qtype: str) -> bytes:
    """QNAME, QTYPE and QCLASS IN in wire format; raises ValueError for a name DNS cannot carry."""
    labels = name.rstrip(".").split(".") if name.strip(".") else []
    wire = bytearray()
    for label in labels:
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 1 <= len(raw) <= 63:
            raise ValueError(f"DNS name {name!r}: label {label!r} must be 1-63 bytes")
        wire += bytes((len(raw),)) + raw
    wire += b"\0"
    if len(wire) > 255:
        raise ValueError(f"DNS name {name!r} is longer than 255 bytes")
    return bytes(wire) + struct.pack("!2H", QTYPES[qtype], CLASS_IN)


def encode_query(query_id: int, question: bytes) -> bytes:
    """A query message: header with RD set and one question."""
    return _HEADER.pack(query_id, FLAG_RD, 1, 0, 0, 0) + question


@dataclass(frozen=True, slots=True)
class Reply:
    """The part of a reply the probe judges."""

    query_id: int
    flags: int
    qdcount: int
    ancount: int
    question: bytes  # the first question's bytes, or b"" when the reply carries none

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F


def decode_reply(data: bytes, question_len: int) -> Reply | None:
    """The header and echoed question of a reply, or None when it is not a DNS reply at all."""
    if len(data) < _HEADER.size:
        return None
    query_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    if not flags & FLAG_QR:
        return None
    question = data[_HEADER.size : _HEADER.size + question_len] if qdcount else b""
    return Reply(query_id, flags, qdcount, ancount, question)


class _Exchange(asyncio.DatagramProtocol):
    """Waits for the one reply that carries our id and question; ignores everything else."""

    def __init__(self, query_id: int, question: bytes) -> None:
        self._query_id = query_id
        self._question = question.lower()  # servers may echo the name in another case (0x20)
        self.done: asyncio.Future[Reply | OSError] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = decode_reply(data, len(self._question))
        if reply is None or reply.query_id != self._query_id or self.done.done():
            return
        if reply.qdcount and reply.question.lower() != self._question:
            return
        self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and not self.done.done():
            self.done.set_result(exc)


class DnsProbe:
    """Ask check.server for check.name/check.qtype over UDP from a fresh socket (fresh port)."""

    __slots__ = ("_addr", "_question", "_subject", "_timeout_s", "_where")

    def __init__(self, check: DnsCheck, timeout_s: float) -> None:
        self._question = encode_question(check.name, check.qtype)
        self._addr = (str(check.server), check.port)
        self._where = host_port(str(check.server), check.port)
        self._subject = f"{check.name} {check.qtype}"
        self._timeout_s = timeout_s

    async def check(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        query_id = _ids.getrandbits(16)
        start = time.monotonic()
        transport: asyncio.DatagramTransport | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                transport, exchange = await loop.create_datagram_endpoint(
                    lambda: _Exchange(query_id, self._question), remote_addr=self._addr
                )
                transport.sendto(encode_query(query_id, self._question))
                outcome = await exchange.done
        except TimeoutError:
            return self._fail(start, timeout_reason(self._timeout_s))
        except OSError as exc:
            why = f"cannot query {self._where}: {exc.strerror or exc}"
            return self._fail(start, why, checker_fault(exc))
        finally:
            if transport is not None:
                transport.close()
        if isinstance(outcome, ConnectionRefusedError):
            return self._fail(start, f"no DNS server at {self._where} (port unreachable)")
        if isinstance(outcome, OSError):
            why = f"query to {self._where} failed: {outcome.strerror}"
            return self._fail(start, why, checker_fault(outcome))
        if outcome.rcode:
            return self._fail(
                start, RCODES.get(outcome.rcode, f"rcode {outcome.rcode}") + f" for {self._subject}"
            )
        if not outcome.ancount:
            truncated = " (truncated reply)" if outcome.flags & FLAG_TC else ""
            return self._fail(start, f"no answer for {self._subject}{truncated}")
        return ProbeResult(ok=True, latency_s=time.monotonic() - start)

    @staticmethod
    def _fail(start: float, reason: str, fault: CheckerFault | None = None) -> ProbeResult:
        latency_s = time.monotonic() - start
        return ProbeResult(ok=False, latency_s=latency_s, reason=reason, checker=fault)
