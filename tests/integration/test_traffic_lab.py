"""Traffic engineering proven at the upstream's RIB: MED, ramps, drain, damping, state file."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time

import pytest

from tests.integration.agent_lab import FALL, INTERVAL_S, AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB = "192.0.2.10/32"
STAGE_HOLD_S = 1.5
RAMP = {"stages": [25, 50, 100], "stage_hold": STAGE_HOLD_S}

# The TE behaviour is version-independent core logic; respawn adoption is tested on both.
only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def start(factory: PopLabFactory, version: str, spec: ServiceSpec, **lab: object) -> AgentLab:
    agent = AgentLab(factory(exabgp_version=version, **lab), [spec])
    agent.start()
    return agent


def meds(agent: AgentLab, prefix: str = WEB) -> set[int | None]:
    return {r.med for r in agent.lab.bird.route(prefix)}


def stamp(t0: float, what: str) -> None:
    print(f"  t=+{time.monotonic() - t0:6.2f}s  {what}")


@only_50
def test_med_follows_lost_capacity_and_load_after_med_hold(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    hold = 1.0
    spec = ServiceSpec(
        "web",
        [WEB],
        edges=[0, 1, 2, 3],
        med=100,
        extra={"med_hold": hold, "min_update_interval": 0.2, "capacity_penalty": 1000},
    )
    spec.extra["targets"] = [
        {
            "name": f"edge{i + 1}",
            "http": {"url": f"http://203.0.113.{11 + i}:8080/health", "load_header": "X-Load"},
        }
        for i in range(4)
    ]
    agent = start(pop_lab_factory, exabgp_version, spec, edges=4)
    wait_for(lambda: meds(agent), lambda m: m == {100}, timeout_s=10, what="MED 100")
    t0 = time.monotonic()
    print(f"\n[exabgp {exabgp_version}] MED steps at BIRD (med_hold {hold}s):")
    for lost, expected in ((1, 350), (2, 600)):
        agent.lab.edges[f"edge{lost}"].kill()
        changed = time.monotonic()
        # Not before the quickest fall ((fall - 1) x interval) + med_hold: the tier must hold.
        assert_holds(
            lambda: meds(agent),
            lambda m, e=expected: m != {e},
            duration_s=(FALL - 1) * INTERVAL_S + hold * 0.9,
            what=f"MED {expected} held back",
        )
        wait_for(lambda: meds(agent), lambda m, e=expected: m == {e}, timeout_s=5)
        stamp(
            t0, f"{lost} of 4 edges lost -> MED {expected} after {time.monotonic() - changed:.2f}s"
        )
    for i in (1, 2):
        agent.lab.edges[f"edge{i}"].restart()
    wait_for(lambda: meds(agent), lambda m: m == {100}, timeout_s=10)
    stamp(t0, "edges restored -> MED 100")
    for i in range(4):  # every edge reports load 0.9: level 2 (≥ 0.85) adds 300
        agent.lab.edges[f"edge{i + 1}"].set_response(200, "ok", {"X-Load": "0.9"})
    wait_for(lambda: meds(agent), lambda m: m == {400}, timeout_s=10)
    stamp(t0, "load 0.9 reported -> MED 400 (tier 0.85: +300)")
    assert "med 400" in agent.log()


@only_50
def test_ramp_neighbors_1_2_4(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", [WEB], edges=[0], extra={"ramp": {**RAMP, "mode": "neighbors"}}),
        links=4,
    )
    bird = agent.lab.bird
    t0 = time.monotonic()
    print(f"\n[exabgp {exabgp_version}] neighbors ramp (stage_hold {STAGE_HOLD_S}s):")
    seen: list[tuple[int, float]] = []
    for count in (1, 2, 4):
        wait_for(lambda c=count: len(bird.route(WEB)), lambda n, c=count: n == c, timeout_s=10)
        seen.append((count, time.monotonic()))
        stamp(
            t0,
            f"{WEB} at {count} of 4 neighbors: {sorted(str(r.neighbor) for r in bird.route(WEB))}",
        )
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(seen)]
    assert all(g > STAGE_HOLD_S * 0.8 for g in gaps), gaps
    assert len({r.protocol for r in bird.route(WEB)}) == 4


@only_50
def test_ramp_prefixes_1_2_4(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    prefixes = [f"192.0.2.{10 + i}/32" for i in range(4)]
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", prefixes, edges=[0], extra={"ramp": RAMP}),
    )
    bird = agent.lab.bird
    t0 = time.monotonic()
    print(f"\n[exabgp {exabgp_version}] prefixes ramp:")
    for count in (1, 2, 4):
        wait_for(
            lambda: sum(bool(bird.route(p)) for p in prefixes),
            lambda n, c=count: n == c,
            timeout_s=10,
        )
        stamp(t0, f"{count} of 4 prefixes announced")


@only_50
def test_ramp_prepend_4_2_1_and_gshut(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    agent = start(
        pop_lab_factory, exabgp_version, ServiceSpec("web", [WEB], edges=[0], extra={"ramp": RAMP})
    )
    bird = agent.lab.bird
    t0 = time.monotonic()
    print(f"\n[exabgp {exabgp_version}] prepend ramp:")
    for length, gshut in ((4, True), (2, True), (1, False)):
        wait_for(
            lambda: bird.route(WEB),
            lambda rs, n=length: bool(rs) and len(rs[0].as_path) == n,
            timeout_s=10,
        )
        [route] = bird.route(WEB)
        assert route.as_path == (65001,) * length
        assert ("65535:0" in route.communities) == gshut, route
        stamp(t0, f"AS path {route.as_path} communities {route.communities}")


@pytest.mark.parametrize("exabgp_version", ["4.2", "5.0"])
def test_kill9_at_stage_50_continues_the_ramp(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    hold = 3.0
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", [WEB], edges=[0], extra={"ramp": {**RAMP, "stage_hold": hold}}),
    )
    bird = agent.lab.bird
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and len(rs[0].as_path) == 2,
        timeout_s=15,
        what="stage 50 (AS path of 2)",
    )
    before = bird.import_counters("pop0_v4")
    mark = len(agent.log())
    os.kill(agent.agent_pid(), signal.SIGKILL)
    after = agent.wait_log("adopted: web", after=mark)
    agent.wait_log("service web unknown -> ramping", after=after)
    # Still at 50 (no withdraw, no return to 25), then on to 100 with no extra step.
    assert len(bird.route(WEB)[0].as_path) == 2
    assert bird.import_counters("pop0_v4") == before
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and len(rs[0].as_path) == 1,
        timeout_s=hold + 5,
        what="stage 100",
    )
    delta = bird.import_counters("pop0_v4") - before
    assert delta.updates_received == 1 and delta.withdraws_received == 0, delta
    print(
        f"\n[exabgp {exabgp_version}] kill -9 at stage 50: ramp continued; updates across "
        f"respawn and the step to 100: {delta.updates_received}, withdraws 0"
    )


@only_50
def test_failure_mid_ramp_withdraws(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", [WEB], edges=[0], extra={"ramp": {**RAMP, "stage_hold": 30}}),
    )
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    killed = time.monotonic()
    agent.lab.edges["edge1"].kill()
    bird.wait_route(WEB, present=False, timeout_s=10)
    delay = time.monotonic() - killed
    print(f"\n[exabgp {exabgp_version}] failure at stage 25 -> withdrawn in {delay * 1000:.0f} ms")
    assert delay < FALL * INTERVAL_S + 1


def write_state(agent: AgentLab, drains: list[dict[str, object]]) -> None:
    state = agent.lab.workdir / "state"
    state.mkdir(exist_ok=True)
    data = {"format": 1, "drains": drains, "meds": [], "ramp_holds": []}
    (state / "state.json").write_text(json.dumps(data))


@only_50
def test_drain_persisted_survives_kill9(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    grace = 3.0
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", [WEB], edges=[0], extra={"drain_grace": grace}),
    )
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    # The drain arrives through the state file and a kill -9: the respawned agent reads it,
    # adopts the held route and drains it: max MED, prepends and GRACEFUL_SHUTDOWN first.
    write_state(
        agent,
        [
            {
                "service": "web",
                "reason": "maintenance",
                "author": "op",
                "since": time.time(),
                "expires": None,
            }
        ],
    )
    os.kill(agent.agent_pid(), signal.SIGKILL)
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and rs[0].med == 4294967294,
        timeout_s=grace,
        what="drained route",
    )
    [route] = bird.route(WEB)
    assert len(route.as_path) == 4 and "65535:0" in route.communities
    bird.wait_route(WEB, present=False, timeout_s=grace + 5)
    before = bird.import_counters("pop0_v4")
    mark = len(agent.log())
    os.kill(agent.agent_pid(), signal.SIGKILL)
    agent.wait_log("operator intents: drain web (maintenance)", after=mark)
    agent.wait_log("service web unknown -> drained", after=mark)
    assert_holds(lambda: bird.route(WEB), lambda rs: not rs, duration_s=1.0)
    assert bird.import_counters("pop0_v4") == before


@only_50
def test_unreadable_state_announces_nothing_new_until_a_reset_without_crash_loop(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = AgentLab(
        pop_lab_factory(exabgp_version=exabgp_version),
        [ServiceSpec("web", [WEB], edges=[0], extra={"drain_grace": 0.5})],
    )
    state = agent.lab.workdir / "state"
    state.mkdir()
    (state / "state.json").write_text("{ not json")
    (state / "state.json.prev").write_bytes(b"\x00\xff garbage")
    agent.start()
    agent.wait_log("state unreadable (")
    pid = agent.agent_pid()
    agent.wait_log("service web unknown -> held")
    assert_holds(
        lambda: (agent.agent_pids(), agent.lab.bird.route(WEB)),
        lambda seen: seen == ([pid], []),
        duration_s=1.5,
        what="the agent stays up (no crash loop) and announces nothing new",
    )
    metrics = agent.lab.pop.run(["curl", "-sf", "http://127.0.0.1:9179/metrics"]).stdout
    assert "anycast_agent_state_unreadable 1.0" in metrics
    reset = [sys.executable, "-m", "anycast_agent", "state", "reset", "--reason", "lab drill"]
    reset += ["--config", str(agent.config_path)]  # where the CLI finds the agent's token
    agent.lab.pop.run(reset)
    agent.lab.bird.wait_route(WEB, timeout_s=10)
    assert agent.lab.bird.route(WEB)[0].med == 100
    agent.wait_log("state reset by token: lab drill")


@only_50
def test_flap_damping_bounds_updates(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    damping = {"penalty": 1000, "half_life": 10, "suppress": 2500, "reuse": 800}
    agent = start(
        pop_lab_factory,
        exabgp_version,
        ServiceSpec("web", [WEB], edges=[0], extra={"damping": damping}),
    )
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    before = bird.import_counters("pop0_v4")
    edge = agent.lab.edges["edge1"]
    down_s, up_s = (FALL + 1) * INTERVAL_S, (2 + 1) * INTERVAL_S  # each crosses fall / rise
    window_s = 15.0
    end = time.monotonic() + window_s
    cycles = 0
    while time.monotonic() < end and cycles < 50:
        edge.set_status(500)
        time.sleep(down_s)  # the flap itself is the stimulus: a timed square wave
        edge.set_status(200)
        time.sleep(up_s)
        cycles += 1
    delta = bird.import_counters("pop0_v4") - before
    updates = delta.updates_received + delta.withdraws_received
    # Each UP/DOWN change adds `penalty`; suppression starts once it exceeds `suppress`, and
    # flaps while suppressed keep it above `reuse`. Before that: at most ceil(suppress/penalty)
    # + 1 changes, the last of which (a DOWN) is the withdraw that suppression keeps.
    budget = math.ceil(damping["suppress"] / damping["penalty"]) + 1
    log = agent.log()
    print(
        f"\n[exabgp {exabgp_version}] {cycles} flap cycles ({down_s:.1f}s down/{up_s:.1f}s up) "
        f"in {window_s:.0f}s: {updates} UP/DOWN updates at BIRD (budget {budget})"
    )
    assert updates <= budget, delta
    assert "-> suppressed: flap damping: penalty" in log
    assert not bird.route(WEB)
