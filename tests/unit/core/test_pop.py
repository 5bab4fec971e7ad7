"""Transcripts of the PoP core's own decisions: health to routes, acks, sessions, the VIP gate,
operator requests and their persistence, reloads, readiness. Events in, commands out."""

from __future__ import annotations

from typing import Any

from anycast_agent.config import AgentConfig, pop_spec
from anycast_agent.core.commands import (
    AddVip,
    Announce,
    Command,
    Persist,
    Ready,
    RefusalKind,
    RemoveVip,
    Reply,
    StartProbe,
    StopProbe,
    Withdraw,
)
from anycast_agent.core.events import (
    AckResult,
    ConfigSwapped,
    DrainRequest,
    IntentSubmitted,
    NeighborChanged,
    Persisted,
    ProbeSkipped,
    RampRequest,
    RibRead,
    SetMedRequest,
    StateResetRequest,
    UndrainRequest,
    VipsListed,
)
from anycast_agent.core.intents import RampAction
from anycast_agent.core.lifecycle import refusals
from anycast_agent.core.traffic import Phase
from anycast_agent.model import MED_MISSING, NeighborState, RouteAttrs, RouteKey, TargetState
from tests.unit.core.playbook import Playbook, pop_config, routes_of, tcp_targets

N1, N2 = "198.51.100.1", "198.51.100.5"
WEB, API = "192.0.2.10/32", "192.0.2.20/32"


def config(
    *,
    services: list[dict[str, Any]] | None = None,
    addresses: dict[str, Any] | None = None,
    neighbors: tuple[str, ...] = (N1,),
    **web: Any,
) -> AgentConfig:
    default = {"name": "web", "prefixes": [WEB], "med": 100, "targets": tcp_targets(3), **web}
    return pop_config(
        neighbors,
        services if services is not None else [default],
        defaults={"drain_grace": 30, "ramp": {"stages": [100]}, "med_hold": 30},
        addresses=addresses or {},
    )


def started(cfg: AgentConfig, **kw: Any) -> Playbook:
    pb = Playbook(cfg, **kw)
    pb.sync()
    return pb


A100 = RouteAttrs(100)


# --- health to routes --------------------------------------------------------------------------


def test_withdraw_after_fall_failures_and_announce_after_rise() -> None:
    pb = started(config(targets=tcp_targets(1)))
    pb.result(0, "e0", True)
    assert routes_of(pb.tick(0)) == []  # one success: still unknown, nothing is sent
    pb.result(1, "e0", True)
    assert routes_of(pb.tick(1)) == [
        Announce(RouteKey(N1, WEB), A100, "service web up: 1/1 targets healthy, quorum 1")
    ]
    for t in (2, 3):
        pb.result(t, "e0", False)
        assert routes_of(pb.tick(t)) == []  # suspicious still carries traffic
    pb.result(4, "e0", False)
    [withdraw] = routes_of(pb.tick(4))
    assert isinstance(withdraw, Withdraw) and "service web down" in withdraw.cause
    assert pb.routes() == {}
    pb.result(5, "e0", True)
    assert routes_of(pb.tick(5)) == []  # recovering is not healthy yet
    pb.result(6, "e0", True)
    assert [type(c) for c in routes_of(pb.tick(6))] == [Announce]


def test_quorum_counts_healthy_targets() -> None:
    pb = started(config(min_healthy=2))
    pb.health(0, "hhu")
    assert pb.routes() and pb.service().phase is Phase.UP
    pb.health(1, "hxu")
    assert pb.service().phase is Phase.UNKNOWN  # e2 may still make the quorum
    pb.health(2, "hxx")
    assert pb.service().phase is Phase.DOWN and pb.routes() == {}
    assert "1/3 targets healthy, quorum 2" in pb.service().reason


def test_capacity_penalty_is_held_then_sent_both_ways() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    pb.health(1, "hhx")
    assert pb.meds() == {100}
    pb.health(31, "hhx")
    assert pb.meds() == {433}  # 100 + round(1000 * 1/3)
    pb.health(32, "hhh")
    pb.health(61.9, "hhh")
    assert pb.meds() == {433}
    pb.health(62, "hhh")
    assert pb.meds() == {100}


def test_nothing_is_sent_and_nothing_ready_until_every_service_is_decided() -> None:
    pb = started(config(services=[_service("web", WEB), _service("api", API)]))
    out = pb.health(0, "hhh", service="web")
    assert routes_of(out) == [
        Announce(RouteKey(N1, WEB), A100, "service web up: 3/3 targets healthy, quorum 1")
    ]
    assert not any(isinstance(c, Ready) for c in pb.log)
    pb.health(1, "xxx", service="api")
    assert [c for c in pb.log if isinstance(c, Ready)] == [Ready()]
    pb.health(2, "hhh", service="api")
    assert [c for c in pb.log if isinstance(c, Ready)] == [Ready()]  # once


def _service(name: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "prefixes": [prefix], "targets": tcp_targets(3), **kw}


# --- ExaBGP's answers and sessions ------------------------------------------------------------


def test_refused_announce_is_retried_with_backoff_and_visible_meanwhile() -> None:
    pb = started(config())
    pb.auto_ack = None
    pb.health(0, "hhh")
    pb.ack(AckResult.ERROR, t=0)
    assert pb.routes() == {}
    [route] = pb.service().routes
    assert route.wanted == A100 and route.accepted is None  # desired != held, in status
    assert routes_of(pb.tick(10)) == []
    assert pb.pop.next_deadline() is not None and pb.pop.next_deadline() <= 30  # type: ignore[operator]
    assert [type(c) for c in routes_of(pb.tick(30))] == [Announce]
    refused = "ExaBGP refused announce 192.0.2.10/32 med 100 to 198.51.100.1"
    assert f"{refused}; tried again in 30s" in pb.logs()
    pb.ack(AckResult.ERROR, t=30)  # refused again: the wait doubles
    assert f"{refused}; tried again in 60s" in pb.logs()
    assert routes_of(pb.tick(89)) == []
    assert [type(c) for c in routes_of(pb.tick(90))] == [Announce]
    pb.ack(AckResult.DONE, t=90)
    assert pb.routes() == {RouteKey(N1, WEB): A100}
    assert pb.pop.rib.refusals == {}  # taken: the next refusal starts at 30 s again
    assert pb.pop.snapshot().commands_acked[AckResult.ERROR] == 2


def test_a_command_in_flight_is_not_sent_again_and_an_unanswered_one_is_retried() -> None:
    pb = started(config())
    pb.auto_ack = None
    pb.health(0, "hhh")
    assert len(pb.unanswered) == 1
    assert routes_of(pb.tick(0.25)) == []  # no ack yet: in flight, not planned again
    pb.ack(AckResult.TIMEOUT, t=2)
    assert pb.routes() == {RouteKey(N1, WEB): A100}  # maybe applied: assumed held
    assert routes_of(pb.tick(3)) == []
    assert [type(c) for c in routes_of(pb.tick(32))] == [Announce]  # the same, once more


def test_session_up_resends_the_routes_to_that_neighbor() -> None:
    pb = started(config(neighbors=(N1, N2)))
    pb.health(0, "hhh")
    assert routes_of(pb.tick(1)) == []
    pb.send(NeighborChanged(pb.at(2), N2, NeighborState.DOWN, "hold timer expired"))
    assert pb.pop.snapshot().neighbors[N2] is NeighborState.DOWN
    pb.send(NeighborChanged(pb.at(3), N2, NeighborState.ESTABLISHED))
    assert routes_of(pb.tick(3)) == [
        Announce(RouteKey(N2, WEB), A100, "service web up: 3/3 targets healthy, quorum 1")
    ]


def test_a_held_route_the_config_no_longer_maps_is_drained_out_at_start() -> None:
    cfg = config(services=[_service("web", WEB), _service("api", API)])
    gone = RouteKey(N1, "192.0.2.99/32")  # its prefix left the config
    held = {RouteKey(N1, WEB): A100, RouteKey(N1, API): A100, gone: A100}
    pb = Playbook(cfg)
    out = pb.sync(held=held)
    [drained] = routes_of(out)
    assert isinstance(drained, Announce) and drained.key == gone
    assert drained.attrs == RouteAttrs(4294967294, (65001,) * 4, ("65535:0",))
    assert drained.cause == "192.0.2.99/32 left the config: drained out"
    assert routes_of(pb.tick(29)) == []
    [withdraw] = routes_of(pb.tick(30))  # after drain_grace
    assert isinstance(withdraw, Withdraw) and withdraw.key == gone
    assert set(pb.routes()) == {RouteKey(N1, WEB), RouteKey(N1, API)}


def test_each_service_shows_its_own_routes_held_and_wanted() -> None:
    cfg = config(services=[_service("web", WEB), _service("api", API)], neighbors=(N1, N2))
    pb = Playbook(cfg)
    pb.sync(held={RouteKey(N2, API): A100})  # held by ExaBGP from before, not wanted yet
    pb.auto_ack = None
    pb.health(0, "hhh", service="web")  # wanted, not acknowledged yet
    web, api = pb.service("web"), pb.service("api")
    assert [(r.prefix, r.neighbor, r.accepted) for r in web.routes] == [
        (WEB, N1, None),
        (WEB, N2, None),
    ]
    assert all(r.wanted is not None for r in web.routes)
    assert [(r.prefix, r.neighbor, r.accepted) for r in api.routes] == [(API, N2, A100)]


def test_a_snapshot_shows_every_change_of_a_target_and_shares_the_rest() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    first = pb.service().targets
    pb.result(1, "e0", False)
    pb.send(ProbeSkipped(pb.at(1), "web", "e1", 2))
    pb.tick(1)
    second = pb.service().targets
    assert second[0].state is TargetState.SUSPICIOUS
    assert second[0].probes_failed == first[0].probes_failed + 1
    assert second[0].last_reason == "HTTP 500"
    assert second[1].skipped_slots == first[1].skipped_slots + 2
    assert second[2] is first[2]  # unchanged: the same row, made once
    pb.result(2, "e2", True)
    pb.tick(2)
    assert pb.service().targets[2].probes_ok == first[2].probes_ok + 1


def test_more_than_half_of_the_routes_leaving_is_held_back_until_confirmed() -> None:
    held = {
        RouteKey(N1, WEB): A100,
        RouteKey(N1, "192.0.2.99/32"): A100,  # prefix no longer configured
        RouteKey(N2, WEB): A100,  # neighbor no longer configured
    }
    pb = Playbook(config())
    out = pb.sync(held=held)
    assert routes_of(out) == [] and routes_of(pb.tick(100)) == []
    assert any("nothing is removed until" in x for x in pb.logs())
    assert pb.pop.snapshot().removal_held == 2
    swap(pb, 101, config(), allow_withdraw=True)
    out = pb.tick(101)
    assert {(c.key.neighbor, c.key.prefix) for c in routes_of(out)} == {
        (N1, "192.0.2.99/32"),
        (N2, WEB),
    }
    assert all(c.attrs.med == 4294967294 for c in routes_of(out) if isinstance(c, Announce))
    assert {type(c) for c in routes_of(pb.tick(131))} == {Withdraw}
    assert set(pb.routes()) == {RouteKey(N1, WEB)}


# --- the VIP gate -----------------------------------------------------------------------------


def test_check_mode_decides_nothing_before_the_first_listing_then_withholds() -> None:
    held = {RouteKey(N1, WEB): A100}
    pb = Playbook(config(addresses={"mode": "check"}))
    pb.sync(held=held)
    pb.health(0, "hhh")
    assert pb.pop.next_deadline() is None and pb.routes() == held  # respawn: nothing withdrawn
    pb.send(VipsListed(pb.at(1), frozenset({"192.0.2.10"})))
    assert routes_of(pb.tick(1)) == []
    pb.send(VipsListed(pb.at(2), frozenset()))
    [withdraw] = routes_of(pb.tick(2))
    assert isinstance(withdraw, Withdraw) and withdraw.cause == f"address of {WEB} missing on lo"
    pb.send(VipsListed(pb.at(3), None, "netlink: interface gone"))
    assert (
        "VIP check: netlink: interface gone: every prefix is withheld" not in pb.logs()
    )  # same set
    pb.send(VipsListed(pb.at(4), frozenset({"192.0.2.10"})))
    assert [type(c) for c in routes_of(pb.tick(4))] == [Announce]


def test_manage_mode_adds_the_address_before_the_announce_and_removes_it_after_the_withdraw() -> (
    None
):
    pb = started(config(addresses={"mode": "manage", "remove_on_withdraw": True}))
    out = pb.health(0, "hhh")
    kinds = [type(c) for c in out if isinstance(c, AddVip | Announce | Withdraw | RemoveVip)]
    assert kinds == [AddVip, Announce] or kinds == [AddVip]
    if kinds == [AddVip]:
        out = pb.tick(0.01)
        assert [type(c) for c in routes_of(out)] == [Announce]
    out = pb.health(5, "xxx")
    assert [type(c) for c in out if isinstance(c, Withdraw | RemoveVip)] == [Withdraw, RemoveVip]


def test_manage_mode_adds_the_address_before_the_announce_and_removes_it_after() -> None:
    pb = started(config(addresses={"mode": "manage", "remove_on_withdraw": True}))
    out = pb.health(0, "hhh")
    assert [c for c in out if isinstance(c, AddVip | Announce)] == [AddVip(WEB)]
    assert [type(c) for c in routes_of(pb.tick(0.01))] == [Announce]  # once the address is up
    out = pb.health(5, "xxx")
    assert [type(c) for c in out if isinstance(c, Withdraw | RemoveVip)] == [Withdraw, RemoveVip]


def test_manage_mode_never_announces_when_the_address_cannot_be_added() -> None:
    pb = started(config(addresses={"mode": "manage"}))
    pb.vip_error = "cannot add 192.0.2.10/32 on lo: Operation not permitted"
    pb.health(0, "hhh")
    assert routes_of(pb.tick(1)) == [] and pb.routes() == {}
    assert f"{pb.vip_error}: not announcing {WEB}" in pb.logs()
    assert not [c for c in pb.tick(20) if isinstance(c, AddVip)]  # waits 30 s
    pb.vip_error = ""
    assert [c for c in pb.tick(30) if isinstance(c, AddVip)] == [AddVip(WEB)]
    assert [type(c) for c in routes_of(pb.tick(30.1))] == [Announce]


# --- operator requests --------------------------------------------------------------------------


def test_an_intent_takes_effect_only_once_persisted() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    pb.persist_error = "/var/lib/anycast-agent/state.json: No space left on device"
    reply = pb.request(1, DrainRequest(None, "maintenance", "op"))
    assert reply.refusal is not None and reply.refusal.kind is RefusalKind.NOT_PERSISTED
    assert "No space left on device" in reply.refusal.message
    pb.tick(1)
    assert pb.service().phase is Phase.UP and pb.service().drain is None  # nothing changed
    assert pb.pop.intents.drains == {}
    pb.persist_error = ""
    assert pb.request(2, DrainRequest(None, "maintenance", "op")).refusal is None
    persist = [c for c in pb.log if isinstance(c, Persist) and c.ticket is not None][-1]
    assert "*" in persist.intents.drains
    pb.tick(2)
    assert pb.service().phase is Phase.DRAINING


def test_a_request_while_another_is_being_written_is_refused_busy() -> None:
    pb = started(config())
    first = pb.pop.handle(IntentSubmitted(pb.at(1), 1, DrainRequest("web", "r", "op")))
    assert [type(c) for c in first] == [Persist]  # the write is under way
    [busy] = pb.pop.handle(IntentSubmitted(pb.at(1), 2, SetMedRequest("web", 5, "r", "op")))
    assert isinstance(busy, Reply) and busy.refusal is not None
    assert busy.refusal.kind is RefusalKind.BUSY
    out = pb.pop.handle(Persisted(pb.at(1), 1))
    assert Reply(1) in out
    assert pb.pop.intents.drains["web"].reason == "r"


def test_refusals_name_what_is_wrong() -> None:
    pb = started(config())
    cases = [
        (DrainRequest("nope", "r", "op"), RefusalKind.UNKNOWN_SERVICE, "no service named 'nope'"),
        (UndrainRequest("web", "op"), RefusalKind.CONFLICT, "'web' is not drained"),
        (UndrainRequest(None, "op"), RefusalKind.CONFLICT, "the PoP is not drained"),
        (RampRequest("web", RampAction.ADVANCE, "op"), RefusalKind.CONFLICT, "not ramping"),
        (RampRequest("web", RampAction.RESTART, "op"), RefusalKind.CONFLICT, "not announced"),
    ]
    for request, kind, text in cases:
        refusal = pb.request(0, request).refusal
        assert refusal is not None and refusal.kind is kind and text in refusal.message
    assert not [c for c in pb.log if isinstance(c, Persist)]


def test_ramp_hold_advance_restart_and_the_hold_ends_with_the_ramp() -> None:
    cfg = config(ramp={"stages": [25, 50, 100], "stage_hold": 5}, neighbors=(N1, N2))
    pb = started(cfg)
    pb.health(0, "hhh")
    assert pb.request(0, RampRequest("web", RampAction.HOLD, "op")).refusal is None
    pb.tick(100)
    assert pb.service().stage == 25 and pb.service().ramp_held
    assert pb.request(100, RampRequest("web", RampAction.ADVANCE, "op")).refusal is None
    pb.tick(100)
    assert pb.service().stage == 50
    # A second stage move by hand within min_update_interval (10 s) is refused (R35).
    refusal = pb.request(101, RampRequest("web", RampAction.RESTART, "op")).refusal
    assert refusal is not None and refusal.kind is RefusalKind.CONFLICT
    assert "try again in 9s (min_update_interval)" in refusal.message
    assert pb.request(110, RampRequest("web", RampAction.RESTART, "op")).refusal is None
    pb.tick(110)
    assert pb.service().stage == 25
    pb.health(112, "xxx")
    assert not pb.service().ramp_held and pb.pop.intents.ramp_holds == frozenset()
    assert "ramp hold of web cleared: the service is down" in pb.logs()
    assert [c for c in pb.log if isinstance(c, Persist) and c.ticket is None]


def test_expired_intents_are_dropped_and_persisted() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    pb.request(0, SetMedRequest("web", 7000, "shift", "op", expires_in_s=60))
    pb.tick(1)
    assert pb.meds() == {7000}
    out = pb.tick(61)
    assert any(isinstance(c, Persist) and c.ticket is None and not c.intents.meds for c in out)
    assert pb.meds() == {100}


def test_unreadable_state_keeps_what_is_held_de_preferred_until_a_reset() -> None:
    held = {RouteKey(N1, WEB): A100}
    cfg = config(services=[_service("web", WEB), _service("api", API)])
    pb = Playbook(cfg, state_unreadable="state.json: garbage; state.json.prev: garbage")
    pb.sync(held=held)
    pb.health(0, "hhh", service="web")
    pb.health(0, "hhh", service="api")
    drained = RouteAttrs(4294967294, (65001,) * 4, ("65535:0",))
    assert pb.routes() == {RouteKey(N1, WEB): drained}  # de-preferred; api never announced
    pb.tick(100)  # long past any drain grace: the file never withdraws
    assert pb.routes() == {RouteKey(N1, WEB): drained}
    assert pb.service().phase is Phase.HELD and pb.pop.snapshot().state_unreadable
    for request in (UndrainRequest(None, "op"), DrainRequest("web", "r", "op")):
        refusal = pb.request(101, request).refusal
        assert refusal is not None and "state reset" in refusal.message
    reset = pb.request(102, StateResetRequest("files were corrupted by a disk fault", "op"))
    assert reset.refusal is None
    assert "state reset by op: files were corrupted by a disk fault" in " ".join(pb.logs())
    pb.tick(102)
    assert not pb.pop.snapshot().state_unreadable
    assert pb.service().phase is Phase.UP and pb.service("api").phase is Phase.UP
    assert pb.meds() == {100}
    refusal = pb.request(103, StateResetRequest("again", "op")).refusal
    assert refusal is not None and "nothing to reset" in refusal.message


def test_health_still_withdraws_while_the_state_is_unreadable() -> None:
    pb = Playbook(config(), state_unreadable="state.json: mode 000")
    pb.sync(held={RouteKey(N1, WEB): A100})
    pb.health(0, "hhh")
    [withdraw] = routes_of(pb.health(5, "xxx"))
    assert isinstance(withdraw, Withdraw) and "service web down" in withdraw.cause


# --- reload -------------------------------------------------------------------------------------


def swap(pb: Playbook, t: float, cfg: AgentConfig, allow_withdraw: bool = False) -> list[Command]:
    out = pb.send(ConfigSwapped(pb.at(t), pop_spec(cfg), allow_withdraw))
    pb.config = cfg
    return out


def test_reload_keeps_unchanged_targets_and_restarts_changed_ones() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    targets = tcp_targets(2)
    targets.append({"name": "e2", "tcp": {"host": "203.0.113.12", "port": 80}})
    targets.append({"name": "e3", "tcp": {"host": "203.0.113.13", "port": 80}})
    out = swap(pb, 1, config(targets=targets))
    probes = [c for c in out if isinstance(c, StartProbe | StopProbe)]
    assert [(type(c).__name__, c.service) for c in probes] == [
        ("StopProbe", "web"),
        ("StartProbe", "web"),
        ("StartProbe", "web"),
    ]
    assert [t.state for t in pb.service().targets] == [
        TargetState.HEALTHY,
        TargetState.HEALTHY,
        TargetState.UNKNOWN,
        TargetState.UNKNOWN,
    ]
    assert routes_of(pb.tick(1)) == []  # two healthy still meet the quorum


def test_reload_that_renames_a_service_adopts_its_routes() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    before = pb.routes()
    mark = len(pb.log)
    swap(pb, 1, config(services=[_service("www", WEB)]))
    pb.tick(1)
    pb.health(2, "hhh", service="www")
    assert routes_of(pb.log[mark:]) == [] and pb.routes() == before


def test_reload_that_drops_a_service_drains_its_routes_out() -> None:
    pb = started(
        config(
            services=[_service("web", WEB), _service("api", API), _service("dns", "192.0.2.53/32")]
        )
    )
    for name in ("web", "api", "dns"):
        pb.health(0, "hhh", service=name)
    out = swap(pb, 1, config(services=[_service("web", WEB), _service("dns", "192.0.2.53/32")]))
    assert sum(isinstance(c, StopProbe) for c in out) == 3
    [drained] = routes_of(pb.tick(1))
    assert drained.key == RouteKey(N1, API) and isinstance(drained, Announce)
    assert drained.attrs.med == 4294967294 and "65535:0" in drained.attrs.communities
    [withdraw] = routes_of(pb.tick(31))
    assert withdraw.key == RouteKey(N1, API) and isinstance(withdraw, Withdraw)


def test_reload_that_drops_every_service_removes_nothing_until_confirmed() -> None:
    pb = started(config())
    pb.health(0, "hhh")
    before = pb.routes()
    swap(pb, 1, config(services=[]))
    assert routes_of(pb.tick(100)) == [] and pb.routes() == before
    swap(pb, 101, config(services=[]), allow_withdraw=True)
    assert [type(c) for c in routes_of(pb.tick(101))] == [Announce]  # de-preferred first
    assert [type(c) for c in routes_of(pb.tick(131))] == [Withdraw]


def test_a_reload_must_not_drop_a_drained_service_by_renaming_it() -> None:
    pb = started(config())
    pb.request(0, DrainRequest("web", "maintenance", "op"))
    [why] = refusals(pb.pop.intents, ["www"])
    assert why.startswith("services[web]: drained by op (maintenance)")
    assert "keep its name, or undrain" in why
    assert refusals(pb.pop.intents, ["web"]) == []


def test_reload_to_another_vip_interface_waits_for_its_listing() -> None:
    pb = Playbook(config(addresses={"mode": "check"}))
    pb.sync()
    pb.send(VipsListed(pb.at(0), frozenset({"192.0.2.10"})))
    pb.health(0, "hhh")
    assert pb.routes()
    swap(pb, 1, config(addresses={"mode": "check", "interface": "vip0"}))
    assert pb.pop.next_deadline() is None  # nothing decided about vip0 before it is listed
    pb.send(VipsListed(pb.at(2), frozenset()))
    [withdraw] = routes_of(pb.tick(2))
    assert withdraw.cause == f"address of {WEB} missing on vip0"


# --- what status and metrics read ---------------------------------------------------------------


def test_snapshot_is_built_once_per_change_and_says_announcing_while_ramping() -> None:
    pb = started(config(ramp={"stages": [50, 100], "stage_hold": 5}, neighbors=(N1, N2)))
    pb.health(0, "hhh")
    snap = pb.pop.snapshot()
    assert pb.pop.snapshot() is snap
    web = snap.service("web")
    assert web is not None and web.phase is Phase.RAMPING and web.announcing
    pb.request(1, DrainRequest("web", "r", "op"))
    pb.tick(1)
    assert pb.pop.snapshot() is not snap
    assert not pb.service().announcing  # draining: de-preferred by the operator, not by health


def test_a_reread_of_exabgp_corrects_what_it_lost_or_changed() -> None:
    # R27: ExaBGP reloaded its own config; what it holds is no longer what it acknowledged.
    pb = started(config())
    pb.health(0, "hhh")
    key = RouteKey(N1, WEB)
    assert pb.routes() == {key: A100}
    assert pb.send(RibRead(pb.at(1), {key: A100})) == []  # the same: nothing to say or do
    out = pb.send(RibRead(pb.at(2), {}))  # ExaBGP lost the route
    assert [m for m in pb.logs() if "otherwise than it acknowledged" in m] == [
        f"ExaBGP holds 1 route(s) otherwise than it acknowledged ({WEB} to {N1}): correcting"
    ]
    assert routes_of(out) == []  # the step corrects it, as for any other change
    [announce] = routes_of(pb.tick(2))
    assert isinstance(announce, Announce) and announce.attrs == A100
    pb.send(RibRead(pb.at(3), {key: RouteAttrs(5)}))  # ExaBGP holds another MED
    [announce] = routes_of(pb.tick(3))
    assert isinstance(announce, Announce) and announce.attrs == A100  # the explicit MED again
    assert pb.pop.snapshot().resync_corrections == 2


def test_a_reread_leaves_a_route_with_a_command_in_flight_alone() -> None:
    pb = started(config())
    pb.auto_ack = None
    pb.health(0, "hhh")
    assert len(pb.unanswered) == 1  # the announce is in flight
    assert pb.send(RibRead(pb.at(1), {})) == []
    assert pb.pop.snapshot().resync_corrections == 0


def test_a_held_route_without_a_med_gets_the_wanted_med_at_once_after_a_restart() -> None:
    # R27: after ExaBGP's SIGUSR2 the new agent finds ExaBGP's own route (no MED), not its
    # own; adopting that as the MED sent would hold the correction for med_hold.
    pb = Playbook(config())
    key = RouteKey(N1, WEB)
    pb.sync(held={key: RouteAttrs(MED_MISSING)})
    pb.health(0.5, "hhh")
    assert pb.routes() == {key: A100}


def test_a_reread_leaves_the_routes_of_a_down_session_alone() -> None:
    # Review: ExaBGP may list nothing for a down neighbor; a withdraw owed there must stay owed.
    pb = started(config())
    pb.health(0, "hhh")
    pb.send(NeighborChanged(pb.at(1), N1, NeighborState.DOWN))
    assert pb.send(RibRead(pb.at(2), {})) == []
    assert pb.routes() == {RouteKey(N1, WEB): A100}
