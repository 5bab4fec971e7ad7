"""Replicated intents and ramps in the core (FLEET.md §3.7-§3.8): the ramp share, what ctl/
keys ask of one PoP, and the PoP following them as one more layer of drains and MEDs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from anycast_agent.core.commands import Announce, AskGuard, Withdraw
from anycast_agent.core.events import (
    FleetCtlChanged,
    FleetModeChanged,
    SetMedRequest,
    UndrainRequest,
)
from anycast_agent.core.fleet_intents import fleet_intents, ramp_rank, ramp_share
from anycast_agent.core.traffic import Phase
from anycast_agent.model import MED_DRAIN, FleetMode, WithdrawKind
from tests.unit.core.playbook import Playbook, pop_config, routes_of, tcp_targets

POPS = [f"pop{i:02d}" for i in range(20)]


def j(**value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the ramp share ---------------------------------------------------------------------------


@pytest.mark.parametrize("salt", ["a", "b", "0f3c", "release-42"])
def test_the_ramp_share_is_exact_monotone_and_deterministic(salt: str) -> None:
    sizes = [len(ramp_share(POPS, salt, p)) for p in (0, 5, 25, 50, 100)]
    assert sizes == [0, 1, 5, 10, 20]
    for p in range(100):
        assert ramp_share(POPS, salt, p) <= ramp_share(POPS, salt, p + 1)
    assert ramp_share(list(reversed(POPS)), salt, 25) == ramp_share(POPS, salt, 25)
    assert ramp_rank(salt, POPS)[:5] == sorted(
        ramp_share(POPS, salt, 25), key=ramp_rank(salt, POPS).index
    )


def test_one_pop_of_five_at_25_percent_is_never_none() -> None:
    five = POPS[:5]
    assert all(len(ramp_share(five, str(salt), 25)) == 2 for salt in range(2000))


# --- what the keys ask of one PoP -------------------------------------------------------------


def ask(ctl: dict[str, bytes], pop: str = "pop01", region: str = "eu") -> Any:
    return fleet_intents(ctl, 7, pop, region, ["web", "dns"])


def test_a_region_drain_applies_to_every_service_of_that_region_only() -> None:
    ctl = {"intent/region/eu": j(action="drain", reason="DR test", author="op")}
    assert set(ask(ctl).drains) == {"web", "dns"}
    assert ask(ctl, region="us").drains == {}
    assert ask(ctl).drains["web"].scope == "region/eu"


def test_pop_and_service_intents_and_the_highest_med_wins() -> None:
    ctl = {
        "intent/pop/pop01": j(action="med", med=500, reason="r", author="a"),
        "intent/service/web": j(action="med", med=300, reason="r", author="a"),
        "intent/service/dns": j(action="drain", reason="r", author="a"),
        "intent/pop/pop02": j(action="drain", reason="r", author="a"),
    }
    got = ask(ctl)
    assert {s: m.med for s, m in got.meds.items()} == {"web": 500, "dns": 500}
    assert set(got.drains) == {"dns"}


def test_ramps_drain_the_pops_outside_their_share() -> None:
    members = POPS
    share = ramp_share(members, "s", 25)
    ctl = {"ramp/service/web": j(percent=25, salt="s", members=members, author="op")}
    for pop in POPS:
        assert ("web" in ask(ctl, pop).drains) == (pop not in share)
    assert "web" in ask(ctl, "newpop").drains  # not a member: inactive
    region = {"ramp/region/eu/service/dns": j(percent=0, salt="s", members=members)}
    assert set(ask(region).drains) == {"dns"} and ask(region, region="us").drains == {}


@pytest.mark.parametrize(
    ("key", "raw", "said"),
    [
        ("intent/region/eu", b"{nope", "not a JSON object"),
        ("intent/planet/earth", j(action="drain"), "unknown scope 'planet'"),
        ("intent/pop/pop01", j(action="explode"), "action 'explode' is not drain or med"),
        ("intent/pop/pop01", j(action="med", med=-1), "med -1 is not 0..4294967294"),
        ("intent/pop/pop01", j(action="med", med=True), "med True is not"),
        ("ramp/service/web", j(percent=150, salt="s", members=[]), "percent 150 is not 0..100"),
        ("ramp/service/web", j(percent=50, salt=1, members=[]), "salt must be a string"),
        ("ramp/moon/web", j(percent=50, salt="s", members=[]), "not ramp/service/S"),
    ],
)
def test_a_bad_key_is_ignored_with_a_reason(key: str, raw: bytes, said: str) -> None:
    got = ask({key: raw})
    assert got.drains == {} and got.meds == {}
    assert [p for p in got.problems if said in p and key in p], got.problems


# --- the PoP following them -------------------------------------------------------------------


def fleet_pop() -> Playbook:
    cfg = pop_config(
        ("198.51.100.1",),
        [{"name": "web", "prefixes": ["192.0.2.10/32"], "med": 100, "targets": tcp_targets(1)}],
        defaults={"drain_grace": 30, "ramp": {"stages": [100]}, "min_update_interval": 0},
        fleet={"endpoints": ["http://127.0.0.1:2379"], "region": "eu", "min_pops": 1},
    )
    pb = Playbook(cfg)
    pb.sync()
    pb.health(0, "h")
    pb.send(FleetModeChanged(pb.at(0), FleetMode.CONNECTED, "test"))
    return pb


def test_a_region_drain_de_prefers_then_asks_the_guard_and_only_the_fleet_undrains_it() -> None:
    pb = fleet_pop()
    ctl = {"intent/region/eu": j(action="drain", reason="DR test", author="op")}
    out = pb.send(FleetCtlChanged(pb.at(1), ctl, 42)) + pb.tick(1)
    assert [c.attrs.med for c in routes_of(out) if isinstance(c, Announce)] == [MED_DRAIN]
    assert "fleet intents at revision 42: drain web" in pb.logs()
    assert pb.service().phase is Phase.DRAINING
    assert pb.pop.fleet_revision == 42
    refusal = pb.request(2, UndrainRequest("web", "op")).refusal
    assert refusal is not None and "drained by the fleet" in refusal.message
    assert [a for a in pb.tick(31) if isinstance(a, AskGuard)] == [
        AskGuard("web", WithdrawKind.DRAIN)
    ]
    # The fleet's undrain (the key deleted) brings it back through the ramp, at once.
    out = pb.send(FleetCtlChanged(pb.at(32), {}, 43)) + pb.tick(32)
    assert [(type(c), c.attrs.med) for c in routes_of(out) if isinstance(c, Announce)] == [
        (Announce, 100)
    ]
    assert not any(isinstance(c, Withdraw) for c in pb.log)


def test_a_fleet_med_applies_and_the_pops_own_override_wins() -> None:
    pb = fleet_pop()
    ctl = {"intent/service/web": j(action="med", med=700, reason="shift", author="op")}
    pb.send(FleetCtlChanged(pb.at(1), ctl, 5))
    pb.tick(1)
    assert pb.meds() == {700}
    assert pb.request(2, SetMedRequest("web", 300, "local", "op")).refusal is None
    pb.tick(40)
    assert pb.meds() == {300}


def test_an_unchanged_view_logs_nothing_and_a_bad_key_is_said_once() -> None:
    pb = fleet_pop()
    ctl = {"intent/pop/t": j(action="explode")}
    out = pb.send(FleetCtlChanged(pb.at(1), ctl, 5))
    assert [c.message for c in out if hasattr(c, "message")] == [
        "ctl/intent/pop/t: action 'explode' is not drain or med: ignored"
    ]
    assert pb.send(FleetCtlChanged(pb.at(2), ctl, 6)) == []
