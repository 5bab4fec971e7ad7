"""Chaos R8 against the running agent, judged at the upstream: exactly one writer per PoP, a
second copy started by hand exits, and ExaBGP's SIGUSR2 overlap never loses the endpoint."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.faults import SESSION, assert_no_update
from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.exabgp import ExabgpVersion
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import wait_for

WEB = "192.0.2.10/32"
# ExaBGP 4.2 counts every start of its API process, SIGUSR2 restarts included, toward its
# respawn limit: more than 5 starts within one 64 s window (aligned to the wall clock) and it
# exits, withdrawing the PoP (seen here on the sixth). 5.0 counts only real respawns.
ROUNDS = {"4.2": 4, "5.0": 10}


def lock_holders(lock: Path) -> list[int]:
    """The PIDs holding a flock on `lock`, from /proc/locks."""
    inode = os.stat(lock).st_ino
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            holders.append(int(fields[4]))
    return holders


def test_a_second_agent_started_by_hand_exits_and_sends_nothing(
    pop_lab_factory: PopLabFactory,
) -> None:
    lab = pop_lab_factory(exabgp_version="5.0")
    agent = AgentLab(lab, [ServiceSpec("web", [WEB], edges=[0])])
    agent.start()
    lab.bird.wait_route(WEB, timeout_s=10)
    agent.wait_log("announce 192.0.2.10/32")
    first = agent.agent_pid()
    before = lab.bird.import_counters(SESSION)
    argv = [sys.executable, "-m", "anycast_agent", "run", "--config", str(agent.config_path)]
    started = time.monotonic()
    second = lab.pop.run(argv, check=False, timeout_s=20)
    took = time.monotonic() - started
    print(f"\n[R8] a copy started by hand: exit {second.returncode} in {took:.1f}s")
    assert second.returncode == 4, second.stderr
    assert f"another anycast-agent (pid {first}) holds" in second.stderr
    assert "agent.lock" in second.stderr
    assert "announce" not in second.stdout  # not one command written
    assert_no_update(lab.bird, WEB, before, 1.0)
    assert agent.agent_pids() == [first]
    assert lock_holders(lab.workdir / "state" / "agent.lock") == [first]


@pytest.mark.parametrize("exabgp_version", ["4.2", "5.0"])
def test_sigusr2_ten_times_one_writer_at_a_time_and_the_endpoint_answers(
    pop_lab_factory: PopLabFactory, exabgp_version: ExabgpVersion
) -> None:
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    agent = AgentLab(lab, [ServiceSpec("web", [WEB], edges=[0])])
    agent.start()
    lab.bird.wait_route(WEB, timeout_s=15)
    agent.wait_log("announce 192.0.2.10/32")
    lock = lab.workdir / "state" / "agent.lock"
    before = lab.bird.import_counters(SESSION)
    pid, answered_after = agent.agent_pid(), []
    rounds = ROUNDS[exabgp_version]
    for _ in range(rounds):
        mark = len(agent.log())
        signalled = time.monotonic()
        agent.exa.send_signal(signal.SIGUSR2)
        wait_for(
            agent.agent_pids,
            lambda pids, old=pid: pids == [pids[0]] and old not in pids,  # type: ignore[misc]
            timeout_s=10,
            what="the new agent alone",
        )
        pid = agent.agent_pid()
        wait_for(lambda: lock_holders(lock), lambda h, p=pid: h == [p], timeout_s=10)  # type: ignore[misc]
        agent.wait_log("control endpoint listening", after=mark, timeout_s=10)
        status = lab.pop.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9179/healthz",
            ],
            check=False,
        )
        assert status.stdout in ("200", "503"), status
        answered_after.append(time.monotonic() - signalled)
        assert lab.bird.route(WEB), "the route left BIRD during the upgrade"
    after = lab.bird.import_counters(SESSION)
    log = agent.log()
    print(
        f"\n[R8 exabgp {exabgp_version}] {rounds} SIGUSR2: endpoint answered after "
        f"{min(answered_after):.1f}-{max(answered_after):.1f}s; waits for the lock: "
        f"{log.count('waiting for it to exit')}, kills: {log.count('still holds the lock')}; "
        f"BIRD {before} -> {after}"
    )
    assert "unavailable" not in log  # the endpoint was never given up
    assert after.withdraws_received == before.withdraws_received
    assert after.updates_accepted == before.updates_accepted  # the route never changed
    if exabgp_version == "5.0":
        assert after == before
    else:  # 4.2 re-sends its RIB on SIGUSR2: identical UPDATEs, which BIRD ignores
        extra = after.updates_received - before.updates_received
        assert extra <= rounds and after.updates_ignored - before.updates_ignored == extra
