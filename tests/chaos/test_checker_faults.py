"""Chaos R15: the checker broken while the service is fine never withdraws the PoP; the edges
dying while the checker works still does, within fall x interval + timeout. Judged at BIRD's
RIB and its UPDATE counters (RELIABILITY.md R15)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.integration.agent_lab import FALL, INTERVAL_S, TIMEOUT_S, AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB = "192.0.2.10/32"
SESSION = "pop0_v4"
# Long enough for fall x interval + timeout several times over: a checker fault wrongly taken
# for a target failure would have withdrawn the route within it.
BLIND_S = 3.0

# The classification is the agent's own code: one ExaBGP version is enough.
only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def start(factory: PopLabFactory, version: str) -> AgentLab:
    agent = AgentLab(factory(exabgp_version=version), [ServiceSpec("web", [WEB], edges=[0, 1])])
    agent.start()
    agent.lab.bird.wait_route(WEB, timeout_s=10)
    agent.wait_log("announce 192.0.2.10/32")
    return agent


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def prlimit(pid: int, nofile: int) -> None:
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={nofile}:{nofile}"], check=True)


@only_50
def test_fd_exhaustion_is_a_checker_fault_not_a_dead_pop(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    bird = agent.lab.bird
    before = bird.import_counters(SESSION)
    pid = agent.agent_pid()
    mark = len(agent.log())
    # No room for one more descriptor: every probe's socket() fails with EMFILE.
    prlimit(pid, open_fds(pid))
    agent.wait_log("checker fault EMFILE", after=mark, timeout_s=5)
    assert_holds(
        lambda: (bird.import_counters(SESSION), len(bird.route(WEB))),
        lambda seen: seen == (before, 1),
        duration_s=BLIND_S,
        what="no UPDATE while the agent has no file descriptors",
    )
    prlimit(pid, 4096)
    agent.wait_log("checker fault over: probing works again", after=mark, timeout_s=5)
    assert bird.import_counters(SESSION) == before
    print(f"\n[R15 EMFILE] {BLIND_S}s without descriptors: BIRD counters {before} unchanged")


@only_50
def test_a_local_output_drop_is_a_checker_fault_not_a_dead_pop(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    lab, bird = agent.lab, agent.lab.bird
    before = bird.import_counters(SESSION)
    mark = len(agent.log())
    # The agent's own host drops its probes on the way out: connect() fails with EPERM. (A
    # drop on the input side looks exactly like a dead edge, and is treated as one.)
    ruleset = lab.workdir / "chaos.nft"
    ruleset.write_text(
        "table inet chaos {\n"
        "  chain out { type filter hook output priority 0; policy accept;\n"
        "    tcp dport 8080 drop\n  }\n}\n"
    )
    lab.pop.run(["nft", "-f", str(ruleset)])
    try:
        agent.wait_log("checker fault EPERM", after=mark, timeout_s=5)
        assert_holds(
            lambda: (bird.import_counters(SESSION), len(bird.route(WEB))),
            lambda seen: seen == (before, 1),
            duration_s=BLIND_S,
            what="no UPDATE while the agent's own firewall drops its probes",
        )
    finally:
        lab.pop.run(["nft", "delete", "table", "inet", "chaos"])
    agent.wait_log("checker fault over: probing works again", after=mark, timeout_s=5)
    assert bird.import_counters(SESSION) == before
    print(f"\n[R15 EPERM] {BLIND_S}s of nft output drops: BIRD counters {before} unchanged")


@only_50
def test_edges_that_really_die_are_still_withdrawn_in_time(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    bound = FALL * INTERVAL_S + TIMEOUT_S + 1.0  # + the jitter, the step and BIRD
    killed = time.monotonic()
    for edge in ("edge1", "edge2"):
        agent.lab.edges[edge].kill()
    wait_for(lambda: agent.lab.bird.route(WEB), lambda r: not r, timeout_s=bound, what="withdraw")
    delay = time.monotonic() - killed
    assert "checker fault" not in agent.log()
    print(
        f"\n[R15 negative] both edges killed: withdrawn at BIRD after {delay:.2f}s "
        f"(bound {bound:.2f}s)"
    )
