"""Transcripts of traffic engineering through the PoP core: MED holds, ramps, drain, damping,
adoption. Targets move by real probe results; routes are what the acked commands left."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from anycast_agent.config import AgentConfig
from anycast_agent.core.commands import Persist
from anycast_agent.core.events import (
    ClearMedRequest,
    DrainRequest,
    IntentSubmitted,
    SetMedRequest,
    UndrainRequest,
)
from anycast_agent.core.intents import POP, Drain, Intents
from anycast_agent.core.traffic import Phase
from anycast_agent.model import MED_DRAIN, RouteAttrs, RouteKey
from anycast_agent.store import decode, encode
from tests.unit.core.playbook import WALL0, Playbook, pop_config, routes_of, tcp_targets

N4 = ["198.51.100.1", "198.51.100.5", "198.51.100.9", "198.51.100.13"]


def config(neighbors: int = 4, prefixes: int = 1, targets: int = 4, **service: Any) -> AgentConfig:
    web = {
        "name": "web",
        "prefixes": [f"192.0.2.{10 + i}/32" for i in range(prefixes)],
        "med": 100,
        "targets": tcp_targets(targets),
        **service,
    }
    defaults = {"med_hold": 30, "min_update_interval": 10, "drain_grace": 30}
    return pop_config(N4[:neighbors], [web], defaults=defaults)


def no_ramp(**kw: Any) -> AgentConfig:
    return config(ramp={"stages": [100]}, **kw)


def started(cfg: AgentConfig, **kw: Any) -> Playbook:
    pb = Playbook(cfg, **kw)
    pb.sync()
    return pb


def neighbors_announced(pb: Playbook) -> list[str]:
    return sorted(k.neighbor for k in pb.routes())


def test_med_rises_with_lost_capacity_only_after_med_hold() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    assert pb.meds() == {100}
    pb.health(1, "hhhx")
    assert pb.meds() == {100} and pb.pop.next_deadline() == pytest.approx(1.25)
    assert pb.pop.outcomes["web"].wake_at == 31  # 350 pending for med_hold
    assert "MED 350 pending" in pb.service().reason
    pb.health(30.9, "hhhx")
    assert pb.meds() == {100}
    pb.health(31, "hhhx")
    assert pb.meds() == {350}
    pb.health(40, "hhxx")
    pb.health(69.9, "hhxx")
    assert pb.meds() == {350}
    pb.health(70, "hhxx")
    assert pb.meds() == {600}
    pb.health(80, "hhhh")
    pb.health(110, "hhhh")
    assert pb.meds() == {100}


def test_recovering_targets_count_as_lost_capacity() -> None:
    # The copy of the shell's glue in the old test counted only unhealthy targets as lost.
    pb = started(no_ramp(med_hold=0, min_update_interval=0))
    pb.health(0, "hhhh")
    pb.health(1, "hhhx")
    assert pb.meds() == {350}
    pb.health(2, "hhhr")
    assert pb.meds() == {350}  # recovering carries no traffic yet
    pb.health(3, "hhhh")
    assert pb.meds() == {100}


def test_flapping_tier_never_sent() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    for t in range(1, 60, 2):  # 350 never holds for 30 s
        pb.health(t, "hhhx")
        pb.health(t + 1, "hhhh")
        assert pb.meds() == {100}


def test_load_tiers() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh", load=0.9)
    assert pb.meds() == {400}  # the first announce takes the MED at once
    pb.health(1, "hhhh", load=0.96)
    pb.health(31, "hhhh", load=0.96)
    assert pb.meds() == {1100}
    pb.health(32, "hhhh", load=0.1)
    pb.health(61.9, "hhhh", load=0.1)
    assert pb.meds() == {1100}
    pb.health(62, "hhhh", load=0.1)
    assert pb.meds() == {100}


def test_min_update_interval_spaces_changes() -> None:
    pb = started(no_ramp(med_hold=0, min_update_interval=10))
    pb.health(0, "hhhh")
    pb.health(1, "hhhx")
    assert pb.meds() == {100}  # last change at 0: wait until 10
    pb.health(10, "hhhx")
    assert pb.meds() == {350}
    pb.health(11, "hhxx")
    assert pb.meds() == {350}
    pb.health(20, "hhxx")
    assert pb.meds() == {600}


def test_override_wins_at_once() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    assert pb.request(1, SetMedRequest("web", 5000, "test", "op")).refusal is None
    pb.tick(1)
    assert pb.meds() == {5000} and "set by op" in pb.service().reason


def test_ramp_neighbors_1_2_4() -> None:
    pb = started(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    counts = []
    for t in (0, 59, 60, 119, 120, 500):
        pb.health(t, "hhhh")
        counts.append((pb.service().stage, neighbors_announced(pb)))
    assert counts == [
        (25, N4[:1]),
        (25, N4[:1]),
        (50, N4[:2]),
        (50, N4[:2]),
        (100, sorted(N4)),
        (100, sorted(N4)),
    ]


def test_ramp_prefixes() -> None:
    pb = started(config(neighbors=1, prefixes=4, ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    sizes = []
    for t in (0, 5, 10):
        pb.health(t, "hhhh")
        sizes.append(len(pb.routes()))
    assert sizes == [1, 2, 4]
    assert pb.service().ramp_mode == "prefixes"


def test_ramp_prepend_paths_4_2_1_and_gshut_until_100() -> None:
    pb = started(config(neighbors=1, ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    seen = []
    for t in (0, 5, 10):
        pb.health(t, "hhhh")
        [attrs] = pb.routes().values()
        seen.append((len(attrs.as_path) or 1, "65535:0" in attrs.communities))
    assert seen == [(4, True), (2, True), (1, False)]
    assert pb.service().ramp_mode == "prepend"


def test_down_mid_ramp_withdraws_everything_and_restarts() -> None:
    pb = started(config(ramp={"stages": [25, 50, 100], "stage_hold": 5}, targets=1))
    pb.health(0, "h")
    pb.health(5, "h")
    assert pb.service().stage == 50 and len(pb.routes()) == 2
    pb.health(6, "x")
    assert pb.service().phase is Phase.DOWN and pb.routes() == {}
    pb.health(7, "h")
    assert pb.service().stage == 25


def test_drain_deprefers_then_withdraws_then_ramps_on_undrain() -> None:
    pb = started(config(ramp={"stages": [25, 50, 100], "stage_hold": 5}))
    for t in (0, 5, 10):
        pb.health(t, "hhhh")
    assert pb.service().stage == 100
    assert pb.request(11, DrainRequest(None, "maintenance", "op")).refusal is None
    pb.tick(11)
    assert pb.service().phase is Phase.DRAINING and len(pb.routes()) == 4
    [attrs] = set(pb.routes().values())
    assert attrs == RouteAttrs(MED_DRAIN, (65001,) * 4, ("65535:0",))
    assert pb.pop.outcomes["web"].wake_at == 41
    pb.tick(41)
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}
    assert pb.request(42, UndrainRequest(None, "op")).refusal is None
    pb.tick(42)
    assert pb.service().phase is Phase.RAMPING and pb.service().stage == 25


def test_drain_of_a_down_service_withdraws_at_once() -> None:
    pb = started(no_ramp(targets=1))
    pb.health(0, "h")
    pb.health(1, "x")
    pb.request(2, DrainRequest("web", "r", "op"))
    pb.tick(2)
    assert pb.service().phase is Phase.DRAINED


def test_damping_suppresses_after_flaps_and_reuses_after_decay() -> None:
    cfg = no_ramp(
        targets=1, damping={"penalty": 1000, "half_life": 10, "suppress": 2500, "reuse": 1000}
    )
    pb = started(cfg)
    phases = []
    for t, s in [(0, "h"), (1, "x"), (2, "h"), (3, "x"), (4, "h")]:
        pb.health(t, s)
        phases.append(pb.service().phase.value)
    assert phases == ["up", "down", "up", "suppressed", "suppressed"]
    pb.health(5, "h")
    assert pb.service().phase is Phase.SUPPRESSED and pb.service().penalty > 2500
    assert pb.routes() == {}
    reuse_at = pb.pop.outcomes["web"].wake_at
    assert reuse_at is not None
    pb.tick(reuse_at - 0.5)
    assert pb.service().phase is Phase.SUPPRESSED
    pb.tick(reuse_at + 0.01)
    assert pb.service().phase is Phase.UP and pb.routes()


def test_unknown_has_no_opinion() -> None:
    held = {RouteKey(n, "192.0.2.10/32"): RouteAttrs(100) for n in N4}
    pb = Playbook(no_ramp())
    pb.sync(held=held)
    pb.tick(0.5)
    assert pb.service().phase is Phase.UNKNOWN and pb.routes() == held


def test_deprefer_on_down() -> None:
    pb = started(no_ramp(targets=1, on_down="deprefer", med_down=9000))
    pb.health(0, "h")
    pb.health(1, "x")
    assert pb.service().phase is Phase.DOWN and pb.meds() == {9000}


@pytest.mark.parametrize(("held_neighbors", "stage"), [(N4[:1], 25), (N4[:2], 50), (N4, 100)])
def test_respawn_adopts_the_neighbors_stage_and_sends_nothing(
    held_neighbors: list[str], stage: int
) -> None:
    held = {RouteKey(n, "192.0.2.10/32"): RouteAttrs(med=100) for n in held_neighbors}
    pb = Playbook(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    pb.sync(held=held)
    out = pb.health(1, "hhhh")
    assert pb.service().stage == stage
    assert [c for c in out if hasattr(c, "key")] == []  # the respawn sends ExaBGP nothing
    assert "adopted: web" in pb.logs()[0]


def test_respawn_keeps_the_prepend_stage_and_a_worse_med_until_the_hold() -> None:
    attrs = RouteAttrs(med=350, as_path=(65001, 65001), communities=("65535:0",))
    held = {RouteKey(N4[0], "192.0.2.10/32"): attrs}
    pb = Playbook(config(neighbors=1, ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    pb.sync(held=held)
    pb.health(1, "hhhh")
    assert pb.service().stage == 50 and pb.routes() == held  # 100 is pending, not sent
    pb.health(31, "hhhh")
    assert pb.meds() == {100}


def test_first_start_with_nothing_held_ramps_from_the_first_stage() -> None:
    pb = started(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    pb.health(0, "hhhh")
    assert pb.service().stage == 25


def dual_config(**service: Any) -> AgentConfig:
    """An IPv6 session listed first, and an IPv4-only service (review finding: families)."""
    web = {
        "name": "web",
        "prefixes": ["192.0.2.10/32"],
        "targets": tcp_targets(1),
        "ramp": {"stages": [25, 50, 100], "stage_hold": 5},
        **service,
    }
    return pop_config(["2001:db8:100::1", "198.51.100.1"], [web])


def test_neighbors_ramp_counts_only_neighbors_of_the_prefix_family() -> None:
    pb = started(dual_config())
    assert pb.service().ramp_mode == "neighbors"
    pb.health(0, "h")
    assert neighbors_announced(pb) == ["198.51.100.1"]


def test_respawn_at_full_with_a_family_mismatch_withdraws_nothing() -> None:
    held = {RouteKey("198.51.100.1", "192.0.2.10/32"): RouteAttrs(med=100)}
    pb = Playbook(dual_config())
    pb.sync(held=held)
    pb.health(1, "h")
    assert pb.routes() == held and not [c for c in pb.log if hasattr(c, "key")]


def test_adopt_takes_the_furthest_stage_matching_what_is_held() -> None:
    held = {RouteKey(N4[0], "192.0.2.10/32"): RouteAttrs(med=100)}
    pb = Playbook(config(neighbors=2, ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    pb.sync(held=held)
    pb.health(1, "hhhh")
    assert pb.service().stage == 50  # 25% and 50% of two neighbors are both one: go on at 50%


def test_routes_held_depreferred_are_not_an_up_service() -> None:
    held = {RouteKey(n, "192.0.2.10/32"): RouteAttrs(med=5000) for n in N4}
    pb = Playbook(no_ramp(targets=1, on_down="deprefer", med_down=5000))
    pb.sync(held=held)
    pb.health(1, "h")
    assert pb.meds() == {100}  # recovered: the base MED at once, no hold


def test_service_drain_added_after_a_pop_drain_re_announces_nothing() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    pb.request(0, DrainRequest(None, "maintenance", "op"))
    pb.tick(1)
    assert pb.service().phase is Phase.DRAINING
    pb.tick(31)
    assert pb.service().phase is Phase.DRAINED
    pb.request(40, DrainRequest("web", "also", "op"))
    pb.tick(41)
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}


def test_drain_during_a_ramp_only_deprefers_what_is_announced() -> None:
    pb = started(config(ramp={"stages": [25, 50, 100], "stage_hold": 60}))
    pb.health(0, "hhhh")
    assert len(pb.routes()) == 1
    pb.request(1, DrainRequest("web", "r", "op"))
    pb.tick(1)
    assert pb.service().phase is Phase.DRAINING and pb.meds() == {MED_DRAIN}
    assert len(pb.routes()) == 1


def test_persisted_drain_at_start_never_announces() -> None:
    drain = Drain(POP, "maintenance", "op", since=WALL0 - 3600)
    pb = started(no_ramp(), intents=Intents(drains={POP: drain}))
    pb.health(0, "hhhh")
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}
    assert not [c for c in pb.log if hasattr(c, "key")]


def test_a_storm_of_drains_and_undrains_changes_each_route_at_most_once_per_interval() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    changes: dict[RouteKey, list[float]] = {}
    t, step, accepted = 20.0, 0.1, 0
    while t <= 40:  # 201 accepted calls in 20 s, alternating, the last a drain
        kind = (
            DrainRequest(None, "storm", "op") if accepted % 2 == 0 else UndrainRequest(None, "op")
        )
        accepted += pb.request(t, kind).refusal is None
        for command in routes_of(pb.tick(t)):
            changes.setdefault(command.key, []).append(t)
        t = round(t + step, 1)
    assert accepted == 201
    assert len(changes) == 4  # every route moved, and each at most once per 10 s
    for times in changes.values():
        assert times[0] == 20.0
        assert all(b - a >= 10 for a, b in itertools.pairwise(times)), times
        assert len(times) == 2  # drained at 20, undrained at 30.1
    # The last call (a drain at 40) applies when the interval has passed since the last
    # change (30.1), and not before.
    assert "operator change pending: applies in 0.1s" in pb.service().reason
    assert pb.service().phase is Phase.UP and pb.meds() == {100}
    assert pb.pop.outcomes["web"].wake_at == pytest.approx(40.1)
    pb.tick(40.09)
    assert pb.service().phase is Phase.UP
    pb.tick(40.1)
    assert pb.service().phase is Phase.DRAINING and pb.meds() == {MED_DRAIN}


def test_a_med_override_cleared_at_once_applies_after_the_interval() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    assert pb.request(20, SetMedRequest("web", 5000, "test", "op")).refusal is None
    pb.tick(20)
    assert pb.meds() == {5000}  # the first change after a quiet interval: at once
    assert pb.request(21, ClearMedRequest("web", "op")).refusal is None
    assert routes_of(pb.tick(21)) == [] and pb.meds() == {5000}
    assert "applies in 9.0s" in pb.service().reason
    pb.tick(30)
    assert pb.meds() == {100}


def test_a_drain_held_back_starts_its_grace_when_it_applies() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    pb.request(20, DrainRequest(None, "a", "op"))
    pb.tick(20)
    pb.request(21, UndrainRequest(None, "op"))
    pb.tick(21)
    pb.tick(30)
    assert pb.service().phase is Phase.UP  # the undrain applied at 30
    pb.request(31, DrainRequest(None, "b", "op"))
    pb.tick(31)
    assert pb.service().phase is Phase.UP and pb.meds() == {100}
    pb.tick(40)
    assert pb.service().phase is Phase.DRAINING and pb.meds() == {MED_DRAIN}
    pb.tick(69.9)
    assert pb.service().phase is Phase.DRAINING  # 30 s of grace from 40, not from 31
    pb.tick(70)
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}


def test_health_never_waits_for_an_operator_change_held_back() -> None:
    pb = started(no_ramp(targets=1))
    pb.health(0, "h")
    pb.request(20, DrainRequest(None, "a", "op"))
    pb.tick(20)
    pb.request(21, UndrainRequest(None, "op"))
    pb.tick(21)
    pb.health(22, "x")  # the edge dies while the undrain waits: withdrawn at once
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}


def test_a_drain_for_the_stop_applies_at_once_and_is_never_written() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    out = pb.send(IntentSubmitted(pb.at(20), 1, DrainRequest(None, "stop", "op", on_stop=True)))
    assert not [c for c in out if isinstance(c, Persist)]
    pb.tick(20)
    assert pb.service().phase is Phase.DRAINING and pb.meds() == {MED_DRAIN}
    assert "(for the stop: not persisted)" in " ".join(pb.logs())
    # Whatever is written later (here a MED override) leaves the stop's drain out.
    pb.request(21, SetMedRequest("web", 500, "x", "op"))
    assert json.loads(encode(pb.pop.intents))["drains"] == []
    pb.tick(50)
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}


def test_a_drain_for_the_stop_leaves_an_operators_drain_as_it_is_and_outlives_its_expiry() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    pb.request(20, DrainRequest(None, "maintenance", "alice", expires_in_s=5))
    pb.tick(20)
    before = pb.pop.intents.drains
    assert pb.request(21, DrainRequest(None, "stop", "op", on_stop=True)).refusal is None
    pb.tick(21)
    assert pb.pop.intents.drains == before  # the operator's drain is kept as it was
    assert json.loads(encode(pb.pop.intents))["drains"][0]["reason"] == "maintenance"
    pb.tick(26)  # the operator's drain expires while the unit stops: still drained
    assert pb.pop.intents.drains == {} and pb.service().phase is Phase.DRAINING
    pb.tick(50)
    assert pb.service().phase is Phase.DRAINED and pb.routes() == {}


def test_a_drain_for_the_stop_never_waits_for_min_update_interval() -> None:
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    pb.request(20, SetMedRequest("web", 500, "x", "op"))
    pb.tick(20)
    pb.send(IntentSubmitted(pb.at(21), 9, DrainRequest(None, "stop", "op", on_stop=True)))
    pb.tick(21)  # not 30: the unit's stop timeout runs
    assert pb.service().phase is Phase.DRAINING and pb.meds() == {MED_DRAIN}


def test_a_drain_for_the_stop_is_for_the_whole_pop() -> None:
    pb = started(no_ramp())
    reply = pb.request(1, DrainRequest("web", "stop", "op", on_stop=True))
    assert reply.refusal is not None and "whole PoP" in reply.refusal.message


def test_a_med_change_while_drained_does_not_hold_back_the_undrain() -> None:
    # Review: a MED override changed under a drain used up min_update_interval.
    pb = started(no_ramp())
    pb.health(0, "hhhh")
    pb.request(20, DrainRequest(None, "a", "op"))
    pb.tick(20)
    pb.request(31, SetMedRequest("web", 500, "x", "op"))
    pb.tick(31)
    pb.request(32, UndrainRequest(None, "op"))
    pb.tick(32)
    assert pb.service().phase is Phase.UP and pb.meds() == {500}


# -- per-session drains (issue 19) ------------------------------------------------------------


def test_a_session_drain_deprefers_then_withdraws_that_session_only() -> None:
    cfg = config(neighbors=2, ramp={"stages": [25, 50, 100], "stage_hold": 5})
    pb = started(cfg)
    for t in (0, 5, 10):
        pb.health(t, "hhhh")
    assert len(pb.routes()) == 2
    one, two = RouteKey(N4[0], "192.0.2.10/32"), RouteKey(N4[1], "192.0.2.10/32")
    assert pb.request(20, DrainRequest("web", "IXP work", "op", neighbor=N4[0])).refusal is None
    pb.tick(20)
    assert pb.routes()[one] == RouteAttrs(MED_DRAIN, (65001,) * 4, ("65535:0",))
    assert pb.routes()[two] == RouteAttrs(100)  # the other session is untouched
    assert f"session to {N4[0]} drained" in pb.service().reason
    assert pb.service().session_drains == {N4[0]: "IXP work (op)"}
    pb.tick(50)  # drain_grace 30 s
    assert one not in pb.routes() and pb.routes()[two] == RouteAttrs(100)
    assert pb.service().phase is Phase.UP
    # Back through a prepend ramp on that session: 4, 2, then 1 AS, a stage_hold each.
    assert pb.request(60, UndrainRequest("web", "op", neighbor=N4[0])).refusal is None
    pb.tick(60)
    assert pb.routes()[one].as_path == (65001,) * 4 and "65535:0" in pb.routes()[one].communities
    pb.tick(65)
    assert pb.routes()[one].as_path == (65001,) * 2
    pb.tick(70)
    assert pb.routes()[one] == RouteAttrs(100) and pb.routes()[two] == RouteAttrs(100)


def test_a_session_drain_names_a_session_the_service_has() -> None:
    pb = started(config(neighbors=2))
    reply = pb.request(1, DrainRequest("web", "x", "op", neighbor="203.0.113.99"))
    assert (
        reply.refusal is not None
        and "announces to neighbor '203.0.113.99'" in reply.refusal.message
    )
    reply = pb.request(2, UndrainRequest("web", "op", neighbor=N4[0]))
    assert reply.refusal is not None and "is not drained" in reply.refusal.message


def test_a_pop_wide_session_drain_is_persisted_and_survives_a_restart() -> None:
    pb = started(config(neighbors=2))
    pb.health(0, "hhhh")
    pb.request(10, DrainRequest(None, "transit maintenance", "op", neighbor=N4[1]))
    saved = decode(encode(pb.pop.intents))
    assert saved.sessions == pb.pop.intents.sessions
    again = started(config(neighbors=2), intents=saved)
    again.health(0, "hhhh")
    assert RouteKey(N4[1], "192.0.2.10/32") not in again.routes()  # never announced anew
    assert RouteKey(N4[0], "192.0.2.10/32") in again.routes()


def test_a_storm_of_session_drains_is_coalesced_like_any_operator_change() -> None:
    pb = started(config(neighbors=2, ramp={"stages": [100]}))
    pb.health(0, "hhhh")
    one = RouteKey(N4[0], "192.0.2.10/32")
    changes = []
    for i, t in enumerate(x / 2 for x in range(40, 60)):  # 20 calls in 10 s, alternating
        request = (
            DrainRequest("web", "flap", "op", neighbor=N4[0])
            if i % 2 == 0
            else UndrainRequest("web", "op", neighbor=N4[0])
        )
        pb.request(t, request)
        changes += [t for c in routes_of(pb.tick(t)) if c.key == one]
    assert changes == [20.0]  # the first at once; the rest wait for min_update_interval
    assert pb.routes()[one].med == MED_DRAIN
