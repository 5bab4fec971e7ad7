"""Chaos R31, R32 at the upstream: a config that stops listing announced prefixes never
withdraws them by surprise. One prefix leaving is drained out (GSHUT and max MED first, then
withdrawn); every service leaving removes nothing until an operator confirms, on a reload and
at the start of a respawned agent alike; a reload may not drop a drained service's name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.chaos.faults import SESSION, assert_no_update
from tests.integration.agent_lab import AgentLab, ServiceSpec, agent_config
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB, API, DNS = "192.0.2.10/32", "192.0.2.20/32", "192.0.2.53/32"
MED_DRAIN = 4294967294
GRACE_S = 1.5
SERVICES = [
    ServiceSpec("web", [WEB], edges=[0]),
    ServiceSpec("api", [API], edges=[1]),
    ServiceSpec("dns", [DNS], edges=[2]),
]

only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def config(agent: AgentLab, services: list[ServiceSpec]) -> dict[str, Any]:
    data = agent_config(agent.lab, services)
    data["defaults"]["drain_grace"] = GRACE_S
    return data


def start(factory: PopLabFactory, version: str) -> AgentLab:
    agent = AgentLab(factory(exabgp_version=version), SERVICES)
    agent.write_config(config(agent, SERVICES))
    agent.start()
    for prefix in (WEB, API, DNS):
        agent.lab.bird.wait_route(prefix, timeout_s=10)
    agent.wait_log("announce 192.0.2.53/32")
    return agent


def cli(agent: AgentLab, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in the agent's namespace; `--config` lets it find the token the agent made."""
    argv = [sys.executable, "-m", "anycast_agent", *args, "--config", str(agent.config_path)]
    return agent.lab.pop.run(argv, check=False)


def drained_out(agent: AgentLab, prefix: str) -> float:
    """Wait for `prefix` to be de-preferred with GSHUT, then withdrawn; the seconds between."""
    bird = agent.lab.bird

    def shown() -> list[tuple[int | None, bool]]:
        return [(r.med, "65535:0" in r.communities) for r in bird.route(prefix)]

    wait_for(shown, lambda s: s == [(MED_DRAIN, True)], timeout_s=5, what=f"{prefix} drained")
    t0 = time.monotonic()
    wait_for(lambda: bird.route(prefix), lambda r: not r, timeout_s=10, what=f"{prefix} gone")
    return time.monotonic() - t0


def take(agent: AgentLab, data: dict[str, Any], when: str) -> None:
    """The agent takes a new config: by a reload, or at the start of a respawned agent."""
    agent.write_config(data)
    if when == "reload":
        assert cli(agent, "reload").returncode == 0
    else:
        respawn(agent)


def respawn(agent: AgentLab) -> None:
    old = agent.agent_pid()
    mark = len(agent.log())
    os.kill(old, signal.SIGKILL)
    wait_for(agent.agent_pids, lambda p: p and p != [old], timeout_s=5, what="a new agent")
    agent.wait_log("ExaBGP holds", after=mark)


@only_50
@pytest.mark.parametrize("when", ["reload", "respawn"])
def test_one_prefix_leaving_the_config_is_drained_out(
    pop_lab_factory: PopLabFactory, exabgp_version: str, when: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    take(agent, config(agent, SERVICES[:2]), when)
    took = drained_out(agent, DNS)
    assert GRACE_S - 0.5 <= took <= GRACE_S + 1.5, took
    assert agent.lab.bird.route(WEB) and agent.lab.bird.route(API)
    print(
        f"\n[R32 {when}] one prefix left the config: de-preferred with GSHUT, withdrawn "
        f"{took:.2f}s later (drain_grace {GRACE_S}s)"
    )


@only_50
@pytest.mark.parametrize("when", ["reload", "respawn"])
def test_every_service_leaving_removes_nothing_until_confirmed(
    pop_lab_factory: PopLabFactory, exabgp_version: str, when: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    bird = agent.lab.bird
    before = bird.import_counters(SESSION)
    take(agent, config(agent, []), when)
    agent.wait_log("nothing is removed until `anycast-agent reload --allow-withdraw`")
    assert_no_update(bird, WEB, before, 2 * GRACE_S)
    assert bird.route(API) and bird.route(DNS)
    assert cli(agent, "reload", "--allow-withdraw").returncode == 0
    took = drained_out(agent, WEB)
    wait_for(lambda: bird.route(API) + bird.route(DNS), lambda r: not r, timeout_s=10)
    print(
        f"\n[R31 {when}] every service left the config: no UPDATE until --allow-withdraw, "
        f"then drained out ({took:.2f}s)"
    )


@only_50
def test_a_reload_may_not_rename_a_drained_service(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    bird = agent.lab.bird
    assert cli(agent, "drain", "dns", "--reason", "r32").returncode == 0
    wait_for(lambda: bird.route(DNS), lambda r: not r, timeout_s=10, what="dns drained")
    renamed = [*SERVICES[:2], ServiceSpec("resolver", [DNS], edges=[2])]
    agent.write_config(config(agent, renamed))
    out = cli(agent, "reload")
    assert out.returncode == 1
    assert "services[dns]: drained by token (r32)" in out.stderr
    assert_holds(lambda: bird.route(DNS), lambda r: not r, duration_s=2.0, what="still drained")
    print("\n[R32 rename] reload refused: " + out.stderr.strip().splitlines()[-1])
