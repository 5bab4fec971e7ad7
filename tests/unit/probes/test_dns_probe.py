"""DNS probe against a tiny UDP responder on loopback, written here from RFC 1035 alone."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import cast

import dns.flags
import dns.message
import dns.rrset
import pytest

from anycast_agent.config import DnsCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.dns import question_name
from tests.unit.probes.conftest import LOOPBACKS


@dataclass
class Query:
    query_id: int
    flags: int
    name: str
    qtype: int


def parse_query(data: bytes) -> tuple[Query, int]:
    query_id, flags, qdcount = struct.unpack_from("!3H", data)
    assert qdcount == 1
    labels, pos = [], 12
    while data[pos]:
        labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
        pos += 1 + data[pos]
    qtype, _qclass = struct.unpack_from("!2H", data, pos + 1)
    return Query(query_id, flags, ".".join(labels), qtype), pos + 5


@dataclass
class Responder(asyncio.DatagramProtocol):
    """www → one A record; missing → NXDOMAIN; empty → NOERROR, no answer; wrongid → a reply
    with another id; silent → nothing; mixedcase → the question echoed in upper case."""

    queries: list[Query] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query, end = parse_query(data)
        self.queries.append(query)
        label = query.name.split(".")[0]
        question = data[12:end]
        reply_id, rcode, answers = query.query_id, 0, b""
        if label in ("www", "mixedcase"):
            # name pointer to offset 12, type A, class IN, TTL 60, 4 bytes of address
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([192, 0, 2, 1])
        elif label == "missing":
            rcode = 3
        elif label == "wrongid":
            reply_id ^= 0x5A5A
        elif label == "silent":
            return
        if label == "mixedcase":
            question = question.upper()
        flags = 0x8000 | 0x0100 | 0x0080 | rcode  # QR, RD echoed, RA
        header = struct.pack("!6H", reply_id, flags, 1, 1 if answers else 0, 0, 0)
        assert self.transport is not None
        self.transport.sendto(header + question + answers, addr)


@pytest.fixture(params=LOOPBACKS)
async def responder(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Responder, str, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Responder, local_addr=(request.param, 0))
    yield proto, request.param, transport.get_extra_info("sockname")[1]
    transport.close()


async def query(
    factory: ProbeFactory,
    server: str,
    port: int,
    name: str,
    qtype: str = "A",
    timeout_s: float = 0.5,
) -> ProbeResult:
    check = DnsCheck(server=ip_address(server), port=port, name=name, qtype=qtype)
    return await factory.build(check, timeout_s).check()


async def test_answer_is_ok(factory: ProbeFactory, responder: tuple[Responder, str, int]) -> None:
    proto, host, port = responder
    result = await query(factory, host, port, "www.example.test")
    assert result.ok, result.reason
    assert 0 < result.latency_s < 0.5
    (q,) = proto.queries
    assert (q.name, q.qtype) == ("www.example.test", 1)
    assert q.flags == 0x0100  # a plain query with RD set


async def test_qtype_is_sent(factory: ProbeFactory, responder: tuple[Responder, str, int]) -> None:
    proto, host, port = responder
    assert (await query(factory, host, port, "www.example.test.", "AAAA")).ok
    assert [(q.name, q.qtype) for q in proto.queries] == [("www.example.test", 28)]


async def test_query_ids_vary(factory: ProbeFactory, responder: tuple[Responder, str, int]) -> None:
    proto, host, port = responder
    for _ in range(8):
        assert (await query(factory, host, port, "www.example.test")).ok
    assert len({q.query_id for q in proto.queries}) > 1


async def test_nxdomain(factory: ProbeFactory, responder: tuple[Responder, str, int]) -> None:
    _, host, port = responder
    result = await query(factory, host, port, "missing.example.test")
    assert not result.ok
    assert result.reason == "NXDOMAIN for missing.example.test A"


async def test_no_answer(factory: ProbeFactory, responder: tuple[Responder, str, int]) -> None:
    _, host, port = responder
    result = await query(factory, host, port, "empty.example.test", "TXT")
    assert result.reason == "no answer for empty.example.test TXT"


async def test_server_may_echo_the_name_in_another_case(
    factory: ProbeFactory, responder: tuple[Responder, str, int]
) -> None:
    _, host, port = responder
    assert (await query(factory, host, port, "mixedcase.example.test")).ok


@pytest.mark.parametrize("name", ["silent.example.test", "wrongid.example.test"])
async def test_timeout(
    factory: ProbeFactory, responder: tuple[Responder, str, int], name: str
) -> None:
    proto, host, port = responder
    started = time.monotonic()
    result = await query(factory, host, port, name, timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert result.reason == "timeout after 0.3s"
    assert 0.3 <= result.latency_s <= elapsed < 0.5
    assert len(proto.queries) == 1  # the responder did get the query


async def test_port_unreachable(factory: ProbeFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await query(factory, "127.0.0.1", port, "www.example.test")
    assert result.reason == f"no DNS server at 127.0.0.1:{port} (port unreachable)"


def test_question_names() -> None:
    assert question_name("www.example.test").to_wire() == b"\x03www\x07example\x04test\x00"
    assert question_name("Example.TEST.").to_text() == "Example.TEST."
    assert question_name(".").to_wire() == b"\x00"


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".test", ".".join(["abcdefgh"] * 32)])
def test_bad_names_are_refused_at_build(name: str) -> None:
    with pytest.raises(ValueError, match="DNS name"):
        question_name(name)


async def test_edns_is_sent_and_a_truncated_reply_is_asked_again_over_tcp(
    factory: ProbeFactory,
) -> None:
    # The UDP reply says TC; the same server answers over TCP (dnspython's fallback).
    received: list[str] = []

    class Truncating(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            query = dns.message.from_wire(data)
            received.append(f"udp edns={query.edns}")
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.TC
            self.transport.sendto(reply.to_wire(), addr)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        query = dns.message.from_wire(await reader.readexactly(size))
        received.append("tcp")
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        wire = reply.to_wire()
        writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Truncating, local_addr=("127.0.0.1", port))
    try:
        result = await query(factory, "127.0.0.1", port, "big.example.test")
    finally:
        transport.close()
        server.close()
    assert result.ok, result.reason
    assert received == ["udp edns=0", "tcp"]
