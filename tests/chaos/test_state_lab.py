"""Chaos R29, R30, R21 at the upstream: a damaged state file after a kill -9, and a full disk.
No route is withdrawn because of a file, a drain survives as long as one copy does, and an
intent that cannot be written is refused with nothing changed."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.chaos.faults import SESSION, assert_no_update
from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB = "192.0.2.10/32"
MED_DRAIN = 4294967294
HOLD_S = 2.0

only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def start(factory: PopLabFactory, version: str) -> AgentLab:
    agent = AgentLab(
        factory(exabgp_version=version),
        [ServiceSpec("web", [WEB], edges=[0], extra={"drain_grace": 0.5})],
    )
    agent.start()
    agent.lab.bird.wait_route(WEB, timeout_s=10)
    agent.wait_log("announce 192.0.2.10/32")
    return agent


def control(agent: AgentLab, method: str, path: str, body: str = "{}") -> int:
    """An HTTP request to the agent's endpoint in its namespace, with the token the agent made
    at its first start; the status code."""
    token = (agent.lab.workdir / "state" / "control.token").read_text().strip()
    out = agent.lab.pop.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
         "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {token}",
         "-d", body, f"http://127.0.0.1:9179{path}"]
    )  # fmt: skip
    return int(out.stdout)


def respawn(agent: AgentLab) -> int:
    """kill -9 the agent; wait for ExaBGP's new one to have read its state. The log offset
    from before the kill."""
    old = agent.agent_pid()
    mark = len(agent.log())
    os.kill(old, signal.SIGKILL)
    wait_for(agent.agent_pids, lambda p: p and p != [old], timeout_s=5, what="a new agent")
    agent.wait_log("ExaBGP holds", after=mark)
    return mark


@only_50
def test_a_drain_survives_kill_9_while_one_copy_of_the_state_does(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    state = agent.lab.workdir / "state"
    assert control(agent, "POST", "/v1/services/web/drain", '{"reason": "r30"}') == 200
    wait_for(lambda: agent.lab.bird.route(WEB), lambda r: not r, timeout_s=5, what="drained")
    for damage in ("garbage", "deleted"):
        current = state / "state.json"
        if damage == "garbage":
            current.write_bytes(b"\x00 garbage")
        else:
            current.unlink()
        mark = respawn(agent)
        agent.wait_log("using its copy", after=mark)
        assert_holds(
            lambda: agent.lab.bird.route(WEB),
            lambda r: not r,
            duration_s=HOLD_S,
            what=f"the drain still in force with state.json {damage}",
        )
    print("\n[R29/R30] drain kept across kill -9 with state.json garbage, then deleted")


@only_50
def test_both_copies_damaged_keep_the_routes_de_preferred_never_withdrawn(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version)
    state = agent.lab.workdir / "state"
    bird = agent.lab.bird
    (state / "state.json").write_text('{"format": 1, "drains": "truncat')
    (state / "state.json.prev").write_text('{"format": 7}')
    respawn(agent)
    wait_for(lambda: [r.med for r in bird.route(WEB)], lambda m: m == [MED_DRAIN], timeout_s=5)
    assert_holds(
        lambda: [r.med for r in bird.route(WEB)],
        lambda m: m == [MED_DRAIN],
        duration_s=HOLD_S,  # four drain graces: the file never withdraws
        what="held and de-preferred",
    )
    assert control(agent, "POST", "/v1/services/web/undrain") == 409
    assert control(agent, "POST", "/v1/state/reset", '{"reason": "chaos drill"}') == 200
    wait_for(lambda: [r.med for r in bird.route(WEB)], lambda m: m == [100], timeout_s=5)
    print("\n[R29] both copies damaged: held at MED 4294967294 until `state reset`, then 100")


@only_50
def test_a_full_disk_refuses_the_drain_and_changes_nothing(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    state = lab.workdir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state)], check=True)
    try:
        agent = AgentLab(lab, [ServiceSpec("web", [WEB], edges=[0])])
        agent.start()
        lab.bird.wait_route(WEB, timeout_s=10)
        agent.wait_log("announce 192.0.2.10/32")
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], check=False,
                       capture_output=True)  # fmt: skip
        before = lab.bird.import_counters(SESSION)
        assert control(agent, "POST", "/v1/drain", '{"reason": "r21"}') == 503
        assert_no_update(lab.bird, WEB, before, HOLD_S)
        metrics = lab.pop.run(["curl", "-sf", "http://127.0.0.1:9179/metrics"]).stdout
        assert "anycast_agent_state_write_errors_total 1.0" in metrics
        filler.unlink()
        assert control(agent, "POST", "/v1/drain", '{"reason": "r21"}') == 200
        wait_for(
            lambda: [r.med for r in lab.bird.route(WEB)], lambda m: m == [MED_DRAIN], timeout_s=5
        )
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    print("\n[R21] full state_dir: drain answered 503, no UPDATE; with room again: draining")
