"""The agent end to end: real ExaBGP (4.2 and 5.0) running it, BIRD 2 upstream as the oracle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from tests.integration.agent_lab import FALL, INTERVAL_S, RISE, TIMEOUT_S, AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB = "192.0.2.10/32"
API = "192.0.2.20/32"
WEB6 = "2001:db8::10/128"
SESSION = "pop0_v4"


def start(
    factory: PopLabFactory, version: str, services: list[ServiceSpec], **lab: object
) -> AgentLab:
    pop_lab = factory(exabgp_version=version, **lab)
    agent = AgentLab(pop_lab, services)
    agent.start()
    return agent


def test_announce_withdraw_on_kill_and_reannounce(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0], med=150)])
    bird = agent.lab.bird
    agent.agent_pid(timeout_s=10)  # ExaBGP has started the agent
    agent_started = time.monotonic()
    bound = RISE * INTERVAL_S + 2
    wait_for(lambda: bird.route(WEB), timeout_s=bound, what=f"{WEB} announced")
    announced_s = time.monotonic() - agent_started
    [route] = bird.route(WEB)
    assert route.med == 150 and route.as_path == (65001,)
    print(
        f"\n[exabgp {exabgp_version}] announced at BIRD {announced_s:.2f}s after the agent "
        f"started (bound {bound:.1f}s)"
    )

    edge = agent.lab.edges["edge1"]
    killed = time.monotonic()
    edge.kill()
    bird.wait_route(WEB, present=False, timeout_s=10)
    delay = time.monotonic() - killed
    print(
        f"[exabgp {exabgp_version}] edge killed -> withdrawn at BIRD: {delay * 1000:.0f} ms "
        f"(bound {(FALL * INTERVAL_S + 1) * 1000:.0f} ms)"
    )
    assert delay < FALL * INTERVAL_S + 1
    log = agent.log()
    assert "withdraw 192.0.2.10/32 to 198.51.100.1: service web down" in log

    edge.restart()
    restored = time.monotonic()
    bird.wait_route(WEB, timeout_s=10)
    print(
        f"[exabgp {exabgp_version}] edge restored -> re-announced: "
        f"{(time.monotonic() - restored) * 1000:.0f} ms"
    )
    assert bird.route(WEB)[0].med == 150


def test_hung_edge_fails_by_timeout(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0])])
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    stopped = time.monotonic()
    agent.lab.edges["edge1"].sigstop()
    bird.wait_route(WEB, present=False, timeout_s=10)
    delay = time.monotonic() - stopped
    bound = (FALL - 1) * INTERVAL_S * 1.1 + TIMEOUT_S + 0.5
    print(
        f"\n[exabgp {exabgp_version}] edge SIGSTOPped -> withdrawn: {delay * 1000:.0f} ms "
        f"(bound {bound * 1000:.0f} ms)"
    )
    assert delay < bound
    assert "timeout after 0.2s" in agent.log()
    agent.lab.edges["edge1"].sigcont()


def test_agent_kill9_respawn_sends_zero_updates(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(
        pop_lab_factory,
        exabgp_version,
        [ServiceSpec("web", [WEB], edges=[0]), ServiceSpec("api", [API], edges=[1], med=200)],
    )
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    bird.wait_route(API, timeout_s=10)
    # Let the agent settle (both announces acked) before taking the baseline.
    agent.wait_log("announce 192.0.2.20/32 med 200")
    before = bird.import_counters(SESSION)
    old_pid = agent.agent_pid()
    mark = len(agent.log())
    os.kill(old_pid, signal.SIGKILL)
    wait_for(agent.agent_pids, lambda p: p and p != [old_pid], timeout_s=5, what="respawned agent")
    # The new agent reads ExaBGP's RIB, learns both services are up, and has nothing to send.
    after_start = agent.wait_log("ExaBGP holds 2 routes", after=mark)
    agent.wait_log("service web unknown -> up", after=after_start)
    agent.wait_log("service api unknown -> up", after=after_start)
    assert_holds(
        lambda: bird.import_counters(SESSION),
        lambda c: c == before,
        duration_s=3 * INTERVAL_S,
        what="no UPDATE received across the respawn",
    )
    assert "announce" not in agent.log()[after_start:]
    print(f"\n[exabgp {exabgp_version}] kill -9 respawn: BIRD import counters {before} unchanged")


def test_removed_service_drained_out_after_respawn(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    services = [ServiceSpec("web", [WEB], edges=[0]), ServiceSpec("api", [API], edges=[1])]
    agent = start(pop_lab_factory, exabgp_version, services)
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    bird.wait_route(API, timeout_s=10)
    agent.wait_log("announce 192.0.2.20/32")
    before = bird.import_counters(SESSION)
    data = yaml.safe_load(agent.config_path.read_text())
    data["services"] = [s for s in data["services"] if s["name"] != "api"]
    data["defaults"]["drain_grace"] = 0.5
    agent.write_config(data)
    os.kill(agent.agent_pid(), signal.SIGKILL)
    # DESIGN §3.6: a held route the config dropped is de-preferred first, then withdrawn.
    wait_for(lambda: [r.med for r in bird.route(API)], lambda m: m == [4294967294], timeout_s=5)
    bird.wait_route(API, present=False, timeout_s=5)
    assert "announce 192.0.2.20/32 med 4294967294" in agent.log()
    assert "192.0.2.20/32 left the config: drained out" in agent.log()
    agent.wait_log("service web unknown -> up")
    after = bird.import_counters(SESSION)
    # One de-preferred announce and one withdraw, both api's: web saw nothing.
    assert after.updates_received == before.updates_received + 1, (before, after)
    assert after.withdraws_received == before.withdraws_received + 1, (before, after)
    assert bird.route(WEB)


def test_dual_stack(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    agent = start(
        pop_lab_factory,
        exabgp_version,
        [ServiceSpec("web", [WEB, WEB6], edges=[0])],
        ipv6_sessions=True,
    )
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    bird.wait_route(WEB6, timeout_s=10)
    [route6] = bird.route(WEB6)
    assert route6.med == 100
    agent.lab.edges["edge1"].kill()
    bird.wait_route(WEB6, present=False, timeout_s=5)
    bird.wait_route(WEB, present=False, timeout_s=5)


def test_exabgp_stop_withdraws_and_agent_exits(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0])])
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    pid = agent.agent_pid()
    agent.exa.stop()
    bird.wait_route(WEB, present=False, timeout_s=5)
    wait_for(
        lambda: os.path.exists(f"/proc/{pid}"),
        lambda alive: not alive,
        timeout_s=3,
        what=f"agent pid {pid} gone",
    )
    log = agent.log()
    assert "stdin closed by ExaBGP" in log or "ExaBGP is shutting down" in log


def test_ipv6_prefix_without_ipv6_session_is_a_config_error(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    pop_lab = pop_lab_factory(exabgp_version=exabgp_version)
    agent = AgentLab(pop_lab, [ServiceSpec("web", [WEB6], edges=[0])])
    check = subprocess.run(
        [sys.executable, "-m", "anycast_agent", "check-config", str(agent.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 2
    assert "2001:db8::10/128 is ipv6 but no neighbor" in check.stderr
