"""Faults the chaos suite injects, and its one verdict: the lab's DNS server and resolv.conf
(`ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf), nft output rules, and "BIRD saw
no UPDATE"."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.lab.bird import Bird
from tests.lab.netns import Netns
from tests.lab.wait import assert_holds, wait_for

SESSION = "pop0_v4"

SCRIPT = Path(__file__).resolve().parents[1] / "lab" / "dns_server.py"


class DnsServer:
    def __init__(self, netns: Netns, workdir: Path, bind: str, port: int, records: dict[str, str]):
        self.ready = workdir / f"dns-{bind}-{port}.ready"
        argv = [sys.executable, str(SCRIPT), "--bind", bind, "--port", str(port)]
        argv += ["--ready-file", str(self.ready), *(f"{n}={a}" for n, a in records.items())]
        log = workdir / f"dns-{bind}-{port}.log"
        self.proc: subprocess.Popen[bytes] = netns.popen(argv, stdout_path=log, stderr_path=log)
        wait_for(self.ready.exists, timeout_s=5, what=f"DNS server on {bind}:{port}")

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)  # a blackholed resolver: queries, no answers

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def netns_resolver(netns: Netns, nameserver: str) -> Iterator[None]:
    """/etc/netns/NAME/resolv.conf for the namespace, removed afterwards (short timeouts, so
    a silent resolver costs a lookup one second, not ten)."""
    folder = Path("/etc/netns") / netns.name
    folder.mkdir(parents=True, exist_ok=False)
    try:
        (folder / "resolv.conf").write_text(
            f"nameserver {nameserver}\noptions timeout:1 attempts:1\n"
        )
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def nft_output(netns: Netns, workdir: Path, *rules: str) -> Iterator[None]:
    """nft rules on the namespace's output hook (what its own processes send) while inside."""
    ruleset = workdir / "chaos.nft"
    body = "".join(f"    {rule}\n" for rule in rules)
    ruleset.write_text(
        "table inet chaos {\n  chain out { type filter hook output priority 0; policy accept;\n"
        f"{body}  }}\n}}\n"
    )
    netns.run(["nft", "-f", str(ruleset)])
    try:
        yield
    finally:
        netns.run(["nft", "delete", "table", "inet", "chaos"])


def assert_no_update(bird: Bird, prefix: str, before: object, duration_s: float) -> None:
    """For `duration_s`: BIRD's import counters stay `before` and it holds `prefix`."""
    assert_holds(
        lambda: (bird.import_counters(SESSION), len(bird.route(prefix))),
        lambda seen: seen == (before, 1),
        duration_s=duration_s,
        what=f"no UPDATE and {prefix} held",
    )
