"""Transcript tests for traffic engineering: MED holds, ramps, drain, damping, adoption."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from anycast_agent.config import AgentConfig
from anycast_agent.core.health import Health
from anycast_agent.core.intents import POP, Drain, Intents, MedOverride
from anycast_agent.core.policy import decide
from anycast_agent.core.traffic import Memory, Outcome, Phase, adopt, evaluate
from anycast_agent.model import MED_DRAIN, RouteAttrs, RouteKey, TargetState

N4 = ["198.51.100.1", "198.51.100.5", "198.51.100.9", "198.51.100.13"]


def config(neighbors: int = 4, prefixes: int = 1, targets: int = 4, **service: Any) -> AgentConfig:
    return AgentConfig(
        pop="t",
        state_dir="/nonexistent",
        bgp={
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "neighbors": [
                {"address": a, "local_address": "198.51.100.2", "peer_as": 65000}
                for a in N4[:neighbors]
            ],
        },
        defaults={"med_hold": 30, "min_update_interval": 10, "drain_grace": 30},
        services=[
            {
                "name": "web",
                "prefixes": [f"192.0.2.{10 + i}/32" for i in range(prefixes)],
                "med": 100,
                "targets": [
                    {"name": f"e{i}", "tcp": {"host": "203.0.113.11", "port": 80}}
                    for i in range(targets)
                ],
                **service,
            }
        ],
    )


STATES = {"h": TargetState.HEALTHY, "x": TargetState.UNHEALTHY, "u": TargetState.UNKNOWN}


class Run:
    """Feeds evaluate() a transcript of target states and times, like the shell does."""

    def __init__(self, cfg: AgentConfig, mem: Memory | None = None) -> None:
        self.cfg = cfg
        self.svc = cfg.services[0]
        self.policy = cfg.policy(self.svc)
        self.neighbors = cfg.neighbors_of(self.svc)
        self.mem = mem or Memory()
        self.intents = Intents()
        self.held: set[RouteKey] = set()  # what ExaBGP holds, as if every command were acked
        self.held: set[RouteKey] = set()  # what ExaBGP holds, as if every command were acked

    def at(
        self, now: float, states: str, load: float | None = None, wall: float | None = None
    ) -> Outcome:
        healths = [Health(STATES[c]) for c in states]
        decision = decide(self.svc, healths)
        lost = states.count("x")
        self.mem, out = evaluate(
            self.svc,
            self.policy,
            self.neighbors,
            self.mem,
            decision,
            lost,
            load,
            self.intents,
            now,
            now if wall is None else wall,
            self.held,
        )
        for key, attrs in out.wanted.items():
            if attrs is None:
                self.held.discard(key)
            else:
                self.held.add(key)
        return out


def announced(out: Outcome) -> dict[RouteKey, RouteAttrs]:
    return {k: a for k, a in out.wanted.items() if a is not None}


def meds(out: Outcome) -> set[int]:
    return {a.med for a in announced(out).values()}


def no_ramp(**kw: Any) -> AgentConfig:
    return config(ramp={"stages": [100]}, **kw)


def test_med_rises_with_lost_capacity_only_after_med_hold() -> None:
    r = Run(no_ramp())
    assert meds(r.at(0, "hhhh")) == {100}
    out = r.at(1, "hhhx")
    assert meds(out) == {100} and out.wake_at == 31  # 350 pending for med_hold
    assert "MED 350 pending" in out.reason
    assert meds(r.at(30.9, "hhhx")) == {100}
    assert meds(r.at(31, "hhhx")) == {350}
    r.at(40, "hhxx")
    assert meds(r.at(69.9, "hhxx")) == {350}
    assert meds(r.at(70, "hhxx")) == {600}
    r.at(80, "hhhh")
    assert meds(r.at(110, "hhhh")) == {100}


def test_flapping_tier_never_sent() -> None:
    r = Run(no_ramp())
    r.at(0, "hhhh")
    for t in range(1, 60, 2):  # 350 never holds for 30 s
        r.at(t, "hhhx")
        assert meds(r.at(t + 1, "hhhh")) == {100}


def test_load_tiers() -> None:
    r = Run(no_ramp())
    assert meds(r.at(0, "hhhh", load=0.9)) == {400}  # first announce takes the MED at once
    r.at(1, "hhhh", load=0.96)
    assert meds(r.at(31, "hhhh", load=0.96)) == {1100}
    r.at(32, "hhhh", load=0.1)
    assert meds(r.at(61.9, "hhhh", load=0.1)) == {1100}
    assert meds(r.at(62, "hhhh", load=0.1)) == {100}


def test_min_update_interval_spaces_changes() -> None:
    r = Run(no_ramp(med_hold=0, min_update_interval=10))
    r.at(0, "hhhh")
    assert meds(r.at(1, "hhhx")) == {100}  # last change at 0: wait until 10
    assert meds(r.at(10, "hhhx")) == {350}
    assert meds(r.at(11, "hhxx")) == {350}
    assert meds(r.at(20, "hhxx")) == {600}


def test_override_wins_at_once() -> None:
    r = Run(no_ramp())
    r.at(0, "hhhh")
    r.intents = Intents(meds={"web": MedOverride("web", 5000, "test", "op", since=0)})
    out = r.at(1, "hhhh")
    assert meds(out) == {5000} and "set by op" in out.reason


def test_ramp_neighbors_1_2_4() -> None:
    r = Run(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    counts = []
    for t in (0, 59, 60, 119, 120, 500):
        out = r.at(t, "hhhh")
        counts.append((out.stage_percent, sorted(k.neighbor for k in announced(out))))
    assert counts == [
        (25, N4[:1]),
        (25, N4[:1]),
        (50, N4[:2]),
        (50, N4[:2]),
        (100, sorted(N4)),
        (100, sorted(N4)),
    ]


def test_ramp_prefixes() -> None:
    r = Run(config(neighbors=1, prefixes=4, ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    sizes = [len(announced(r.at(t, "hhhh"))) for t in (0, 5, 10)]
    assert sizes == [1, 2, 4]
    assert r.policy.ramp_mode.value == "prefixes"


def test_ramp_prepend_paths_4_2_1_and_gshut_until_100() -> None:
    r = Run(config(neighbors=1, ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    seen = []
    for t in (0, 5, 10):
        [attrs] = announced(r.at(t, "hhhh")).values()
        seen.append((len(attrs.as_path) or 1, "65535:0" in attrs.communities))
    assert seen == [(4, True), (2, True), (1, False)]
    assert r.policy.ramp_mode.value == "prepend"


def test_down_mid_ramp_withdraws_everything_and_restarts() -> None:
    r = Run(config(ramp={"stages": [25, 50, 100], "stage_hold": 5}, targets=1))
    r.at(0, "h")
    r.at(5, "h")  # 50%
    out = r.at(6, "x")
    assert out.phase is Phase.DOWN and not announced(out) and set(out.wanted.values()) == {None}
    assert r.at(7, "h").stage_percent == 25


def test_ramp_hold_advance_restart() -> None:
    r = Run(config(ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    r.at(0, "hhhh")
    r.mem = replace(r.mem, ramp_held=True)
    assert r.at(100, "hhhh").stage_percent == 25
    r.mem = replace(r.mem, ramp_held=False, stage=r.mem.stage + 1, stage_since=100)
    assert r.at(101, "hhhh").stage_percent == 50


def test_drain_deprefers_then_withdraws_then_ramps_on_undrain() -> None:
    r = Run(config(ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    r.at(0, "hhhh")
    r.at(5, "hhhh")
    assert r.at(10, "hhhh").stage_percent == 100
    r.intents = Intents(drains={POP: Drain(POP, "maintenance", "op", since=1000.0)})
    out = r.at(11, "hhhh", wall=1000.0)
    assert out.phase is Phase.DRAINING and len(announced(out)) == 4
    [attrs] = set(announced(out).values())
    assert (
        attrs.med == MED_DRAIN and attrs.as_path == (65001,) * 4 and "65535:0" in attrs.communities
    )
    assert out.wake_at == 41
    out = r.at(41, "hhhh", wall=1030.0)
    assert out.phase is Phase.DRAINED and not announced(out)
    r.intents = Intents()
    out = r.at(42, "hhhh", wall=1031.0)
    assert out.phase is Phase.RAMPING and out.stage_percent == 25


def test_drain_of_a_down_service_withdraws_at_once() -> None:
    r = Run(no_ramp(targets=1))
    r.intents = Intents(drains={"web": Drain("web", "r", "op", since=0.0)})
    assert r.at(0, "x", wall=0.0).phase is Phase.DRAINED


def test_damping_suppresses_after_flaps_and_reuses_after_decay() -> None:
    cfg = no_ramp(
        targets=1, damping={"penalty": 1000, "half_life": 10, "suppress": 2500, "reuse": 1000}
    )
    r = Run(cfg)
    phases = [r.at(t, s).phase.value for t, s in [(0, "h"), (1, "x"), (2, "h"), (3, "x"), (4, "h")]]
    assert phases == ["up", "down", "up", "suppressed", "suppressed"]
    out = r.at(5, "h")
    assert out.phase is Phase.SUPPRESSED and out.penalty > 2500 and not announced(out)
    assert out.wake_at is not None
    reuse_at = out.wake_at
    assert r.at(reuse_at - 0.5, "h").phase is Phase.SUPPRESSED
    assert r.at(reuse_at + 0.01, "h").phase is Phase.UP


def test_unknown_has_no_opinion() -> None:
    r = Run(no_ramp())
    out = r.at(0, "uuuu")
    assert out.phase is Phase.UNKNOWN and out.wanted == {}


def test_deprefer_on_down() -> None:
    r = Run(no_ramp(targets=1, on_down="deprefer", med_down=9000))
    r.at(0, "h")
    out = r.at(1, "x")
    assert out.phase is Phase.DOWN and meds(out) == {9000}


@pytest.mark.parametrize(("held_neighbors", "stage"), [(N4[:1], 0), (N4[:2], 1), (N4, 2)])
def test_adopt_neighbors_stage(held_neighbors: list[str], stage: int) -> None:
    cfg = config(ramp={"stages": [25, 50, 100], "stage_hold": 60})
    svc = cfg.services[0]
    held = {RouteKey(n, "192.0.2.10/32"): RouteAttrs(med=100) for n in held_neighbors}
    mem = adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), held, now=0)
    assert mem.stage == stage and mem.was_up
    r = Run(cfg, mem)
    out = r.at(1, "hhhh")
    # The respawned agent wants exactly what ExaBGP holds: nothing to send.
    assert announced(out) == held


def test_adopt_prepend_stage_and_keep_worse_med_until_hold() -> None:
    cfg = config(neighbors=1, ramp={"stages": [25, 50, 100], "stage_hold": 60})
    svc = cfg.services[0]
    attrs = RouteAttrs(med=350, as_path=(65001, 65001), communities=("65535:0",))
    held = {RouteKey(N4[0], "192.0.2.10/32"): attrs}
    mem = adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), held, now=0)
    r = Run(cfg, mem)
    out = r.at(1, "hhhh")
    assert out.stage_percent == 50 and announced(out) == held  # 100 is pending, not sent
    assert meds(r.at(31, "hhhh")) == {100}


def test_adopt_nothing_held_is_a_first_start() -> None:
    cfg = config(ramp={"stages": [25, 50, 100], "stage_hold": 60})
    svc = cfg.services[0]
    assert adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), {}, now=0) == Memory()


def dual_config(**service: Any) -> AgentConfig:
    """An IPv6 session listed first, and an IPv4-only service (review finding: families)."""
    return AgentConfig(
        pop="t",
        state_dir="/nonexistent",
        bgp={
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "neighbors": [
                {
                    "address": "2001:db8:100::1",
                    "local_address": "2001:db8:100::2",
                    "peer_as": 65000,
                },
                {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000},
            ],
        },
        services=[
            {
                "name": "web",
                "prefixes": ["192.0.2.10/32"],
                "targets": [{"name": "e0", "tcp": {"host": "203.0.113.11", "port": 80}}],
                "ramp": {"stages": [25, 50, 100], "stage_hold": 5},
                **service,
            }
        ],
    )


def test_neighbors_ramp_counts_only_neighbors_of_the_prefix_family() -> None:
    r = Run(dual_config())
    assert r.policy.ramp_mode.value == "neighbors"
    out = r.at(0, "h")
    assert [k.neighbor for k in announced(out)] == ["198.51.100.1"]


def test_respawn_at_full_with_a_family_mismatch_withdraws_nothing() -> None:
    cfg = dual_config()
    svc = cfg.services[0]
    held = {RouteKey("198.51.100.1", "192.0.2.10/32"): RouteAttrs(med=100)}
    mem = adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), held, now=0)
    r = Run(cfg, mem)
    r.held = set(held)
    out = r.at(1, "h")
    assert announced(out) == held and set(out.wanted) == set(held)


def test_adopt_takes_the_furthest_stage_matching_what_is_held() -> None:
    cfg = config(neighbors=2, ramp={"stages": [25, 50, 100], "stage_hold": 60})
    svc = cfg.services[0]
    held = {RouteKey(N4[0], "192.0.2.10/32"): RouteAttrs(med=100)}
    mem = adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), held, now=0)
    assert mem.stage == 1  # 25% and 50% of two neighbors are both one: continue at 50%


def test_adopt_of_routes_held_deprefered_is_not_an_up_service() -> None:
    cfg = no_ramp(targets=1, on_down="deprefer", med_down=5000)
    svc = cfg.services[0]
    held = {RouteKey(n, "192.0.2.10/32"): RouteAttrs(med=5000) for n in N4}
    mem = adopt(svc, cfg.policy(svc), cfg.neighbors_of(svc), held, now=0)
    assert not mem.was_up and mem.med.sent is None
    assert meds(Run(cfg, mem).at(1, "h")) == {100}  # recovered: base MED at once, no hold


def test_service_drain_added_after_a_pop_drain_re_announces_nothing() -> None:
    r = Run(no_ramp())
    r.at(0, "hhhh")
    r.intents = Intents(drains={POP: Drain(POP, "maintenance", "op", since=0.0)})
    assert r.at(1, "hhhh", wall=1.0).phase is Phase.DRAINING
    assert r.at(31, "hhhh", wall=31.0).phase is Phase.DRAINED
    r.intents = Intents(drains={**r.intents.drains, "web": Drain("web", "also", "op", since=40.0)})
    out = r.at(41, "hhhh", wall=41.0)
    assert out.phase is Phase.DRAINED and not announced(out)


def test_drain_during_a_ramp_only_deprefers_what_is_announced() -> None:
    r = Run(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    assert len(announced(r.at(0, "hhhh"))) == 1
    r.intents = Intents(drains={"web": Drain("web", "r", "op", since=1.0)})
    out = r.at(1, "hhhh", wall=1.0)
    assert out.phase is Phase.DRAINING and len(announced(out)) == 1
    assert {a.med for a in announced(out).values()} == {MED_DRAIN}
