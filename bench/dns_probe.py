"""`make bench-dns`: the DNS probe on dnspython against the hand-written one it replaced, side by
side in one run, on a loopback responder: CPU per check and checks a second.

    python -m bench.dns_probe [--checks 4000] [--concurrency 50] [--rounds 3] [--old-rev 1a81caa]

The hand-written probe is loaded from git (`git show REV:anycast_agent/probes/dns.py`), so the
comparison needs a checkout with history. Figures are medians over rounds, A/B interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from anycast_agent.config import DnsCheck
from anycast_agent.probes import dns as new_dns

ROOT = Path(__file__).resolve().parent.parent
ANSWER = bytes.fromhex("c00c000100010000003c0004c0000201")  # www → 192.0.2.1, TTL 60


def responder() -> tuple[int, Callable[[], None]]:
    """A UDP server on 127.0.0.1 answering every query with one A record, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            end = data.index(b"\0", 12) + 5  # the question (the EDNS record, if any, follows)
            flags = (0x8180).to_bytes(2, "big")
            counts = b"\x00\x01\x00\x01\x00\x00\x00\x00"
            sock.sendto(data[:2] + flags + counts + data[12:end] + ANSWER, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join()
        sock.close()

    return sock.getsockname()[1], close


def old_module(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:anycast_agent/probes/dns.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("old_dns")
    sys.modules[module.__name__] = module  # its dataclasses look themselves up there
    exec(compile(source, f"{rev}:anycast_agent/probes/dns.py", "exec"), module.__dict__)
    return module


async def measure(probe: Any, checks: int, concurrency: int) -> tuple[float, float, int]:
    """(CPU seconds per check, checks a second, failed checks)."""
    failed = 0
    left = checks

    async def worker() -> None:
        nonlocal failed, left
        while left > 0:
            left -= 1
            result = await probe.check()
            failed += not result.ok

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return cpu / checks, checks / wall, failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dns_probe", description=__doc__)
    p.add_argument("--checks", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--old-rev", default="1a81caa")
    args = p.parse_args(argv)
    print(
        "bench-dns: python -m bench.dns_probe " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    port, close = responder()
    check = DnsCheck(server=ip_address("127.0.0.1"), port=port, name="www.example.test")
    probes = {
        "dnspython": new_dns.DnsProbe(check, 1.0),
        f"hand-written ({args.old_rev})": old_module(args.old_rev).DnsProbe(check, 1.0),
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in probes}
    try:
        for _ in range(args.rounds):
            for name, probe in probes.items():  # A/B interleaved within every round
                results[name].append(asyncio.run(measure(probe, args.checks, args.concurrency)))
    finally:
        close()
    print(f"{args.checks} checks x {args.rounds} rounds, {args.concurrency} at once, loopback")
    medians = {}
    for name, rows in results.items():
        cpu = statistics.median(r[0] for r in rows) * 1000
        rate = statistics.median(r[1] for r in rows)
        failed = sum(r[2] for r in rows)
        medians[name] = cpu
        print(f"  {name:<24} CPU {cpu:.3f} ms/check, {rate:,.0f} checks/s, {failed} failed")
    new, old = medians.values()
    print(f"  dnspython costs {new / old:.2f}x the hand-written probe's CPU per check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
