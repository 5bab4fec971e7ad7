"""A tiny authoritative DNS server for the lab: A records from the command line, TTL 1.

Run as `python3 dns_server.py --bind 127.0.0.1 --port 53 --ready-file F NAME=ADDRESS ...`;
standalone (no package imports) so it starts in any namespace. Every other name gets NXDOMAIN.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
from pathlib import Path


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset) of the first question."""
    labels, i = [], 12
    while packet[i]:
        length = packet[i]
        labels.append(packet[i + 1 : i + 1 + length].decode("ascii").lower())
        i += 1 + length
    qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
    return ".".join(labels), qtype, i + 5


def answer(packet: bytes, records: dict[str, str]) -> bytes:
    query_id = packet[:2]
    name, qtype, end = _question(packet)
    question = packet[12:end]
    address = records.get(name)
    if address is None:
        return query_id + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return query_id + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0) + question  # no data
    rdata = ipaddress.IPv4Address(address).packed
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 1, len(rdata)) + rdata
    return query_id + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--ready-file", required=True)
    p.add_argument("records", nargs="+", help="NAME=IPV4")
    args = p.parse_args()
    records = dict(r.lower().split("=", 1) for r in args.records)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    Path(args.ready_file).write_text("ready\n")
    while True:
        packet, peer = sock.recvfrom(512)
        try:
            sock.sendto(answer(packet, records), peer)
        except (IndexError, UnicodeDecodeError, struct.error, ValueError):
            continue  # not a query we understand: no answer


if __name__ == "__main__":
    main()
