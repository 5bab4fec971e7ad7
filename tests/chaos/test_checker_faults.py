"""Chaos R15: the checker broken while the service is fine never withdraws the PoP; the edges
dying while the checker works still does, within fall x interval + timeout. Judged at BIRD's
RIB and its UPDATE counters (RELIABILITY.md R15)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.chaos.faults import SESSION, DnsServer, assert_no_update, netns_resolver, nft_output
from tests.integration.agent_lab import (
    FALL,
    INTERVAL_S,
    TIMEOUT_S,
    AgentLab,
    ServiceSpec,
    agent_config,
)
from tests.lab.fixtures import PopLabFactory
from tests.lab.topology import PopLab
from tests.lab.wait import wait_for

WEB = "192.0.2.10/32"
DNS = "192.0.2.53/32"
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


def prlimit(pid: int, soft: int) -> None:
    """Set the agent's soft open-file limit (the hard one stays, so it can be raised back)."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True)


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
    assert_no_update(bird, WEB, before, BLIND_S)
    prlimit(pid, 4096)
    agent.wait_log("checker fault over: probing works again", after=mark, timeout_s=5)
    assert bird.import_counters(SESSION) == before
    print(f"\n[R15 EMFILE] {BLIND_S}s without descriptors: BIRD counters {before} unchanged")


@only_50
def test_a_local_output_drop_is_a_checker_fault_not_a_dead_pop(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # A DNS service: its checks are UDP, and an nft drop of the agent's own output makes
    # sendto() fail with EPERM. (TCP gives no such signal: a dropped SYN is only retried and
    # the connect times out, exactly like a dead edge; so does any drop on the input side.)
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    DnsServer(lab.pop, lab.workdir, "203.0.113.11", 5353, {"www.lab.test": "203.0.113.80"})
    dns = {"name": "ns1", "dns": {"server": "203.0.113.11", "port": 5353, "name": "www.lab.test"}}
    agent = AgentLab(lab, [ServiceSpec("dns", [DNS], edges=[], extra={"targets": [dns]})])
    agent.start()
    bird = lab.bird
    bird.wait_route(DNS, timeout_s=10)
    agent.wait_log("announce 192.0.2.53/32")
    before = bird.import_counters(SESSION)
    mark = len(agent.log())
    with nft_output(lab.pop, lab.workdir, "udp dport 5353 drop"):
        agent.wait_log("checker fault EPERM", after=mark, timeout_s=5)
        assert_no_update(bird, DNS, before, BLIND_S)
    agent.wait_log("checker fault over: probing works again", after=mark, timeout_s=5)
    assert bird.import_counters(SESSION) == before
    print(f"\n[R15 EPERM] {BLIND_S}s of nft output drops: BIRD counters {before} unchanged")


@only_50
def test_a_silent_resolver_keeps_host_name_targets_on_their_last_addresses(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # R19: the targets are host names; the PoP's resolver goes silent for longer than several
    # refreshes. Probes go on to the last addresses: no UPDATE, and the loop never stalls.
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    server = DnsServer(lab.pop, lab.workdir, "127.0.0.1", 53, {"edge1.lab.test": "203.0.113.11"})
    targets = [{"name": "edge1", "http": {"url": "http://edge1.lab.test:8080/health"}}]
    spec = ServiceSpec("web", [WEB], edges=[0], extra={"targets": targets})
    with netns_resolver(lab.pop, "127.0.0.1"):
        agent = AgentLab(lab, [spec])
        config = agent_config(lab, [spec])
        config["resolver"] = {"refresh": "500ms", "deadline": "300ms"}
        agent.write_config(config)
        agent.start()
        lab.bird.wait_route(WEB, timeout_s=10)
        agent.wait_log("announce 192.0.2.10/32")
        before = lab.bird.import_counters(SESSION)
        mark = len(agent.log())
        server.pause()
        try:
            agent.wait_log("cannot resolve 'edge1.lab.test'", after=mark, timeout_s=5)
            ages = []
            deadline = time.monotonic() + BLIND_S
            while time.monotonic() < deadline:
                assert lab.bird.import_counters(SESSION) == before
                assert len(lab.bird.route(WEB)) == 1
                ages.append(progress_age(lab))
                time.sleep(0.2)
        finally:
            server.resume()
        agent.wait_log("resolving 'edge1.lab.test' works again", after=mark, timeout_s=5)
    assert max(ages) < 1.0, ages
    print(f"\n[R19] resolver silent {BLIND_S}s: no UPDATE, progress age at most {max(ages):.2f}s")


def progress_age(lab: PopLab) -> float:
    """The agent's own view of its loop: seconds since probing and deciding last progressed."""
    out = lab.pop.run(["curl", "-sf", "http://127.0.0.1:9179/metrics"]).stdout
    for line in out.splitlines():
        if line.startswith("anycast_agent_last_progress_age_seconds "):
            return float(line.split()[1])
    raise AssertionError("no progress age in /metrics")


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
