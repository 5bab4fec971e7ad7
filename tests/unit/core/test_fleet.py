"""Fleet safety in the core: the guard's decision, the mode machine, and the PoP holding every
withdraw of a service until the guard permits it (FLEET.md §3.4-§3.5), as transcripts."""

from __future__ import annotations

from typing import Any

import pytest

from anycast_agent.config import AgentConfig, pop_spec
from anycast_agent.core.commands import Announce, AskGuard, Command, Publish, Withdraw
from anycast_agent.core.events import (
    ConfigSwapped,
    DrainRequest,
    FleetModeChanged,
    FleetViewChanged,
    GuardAnswered,
    NeighborChanged,
    Synced,
    UndrainRequest,
)
from anycast_agent.core.fleet import (
    REASK_S,
    GuardView,
    Liveness,
    Permit,
    Refused,
    Seen,
    guard_decision,
    next_mode,
)
from anycast_agent.core.traffic import Phase
from anycast_agent.model import (
    GRACEFUL_SHUTDOWN,
    MED_DRAIN,
    Announcing,
    FleetMode,
    NeighborState,
    RefusalReason,
    RouteAttrs,
    RouteKey,
    TargetState,
    WithdrawKind,
)
from tests.unit.core.playbook import Playbook, pop_config, routes_of, tcp_targets

A, D, W, S = (Announcing.ANNOUNCED, Announcing.DEPREFERRED, Announcing.WITHDRAWN, Announcing.SILENT)
HEALTH, DRAIN = WithdrawKind.HEALTH, WithdrawKind.DRAIN
N1, WEB = "198.51.100.1", "192.0.2.10/32"
FLEET = {"endpoints": ["http://127.0.0.1:2379"], "min_pops": 2}


def view(states: str, kind: WithdrawKind = HEALTH, **kw: Any) -> GuardView:
    """`states`: one letter per PoP p0, p1, ...; this PoP is p0."""
    seen = {f"p{i}": Seen(Announcing(s), 10 + i) for i, s in enumerate(states)}
    kw.setdefault("free_slots", ("00",))
    return GuardView("p0", kind, seen, kw.pop("min_pops", 2), **kw)


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "kind", "kw", "expected"),
    [
        ("AAA", HEALTH, {}, Permit(("p1", "p2"), "00")),
        ("AAD", HEALTH, {}, Permit(("p1", "p2"), "00")),  # de-preferred still announces
        ("AAW", HEALTH, {}, RefusalReason.TOO_FEW),
        ("AAS", HEALTH, {}, RefusalReason.TOO_FEW),  # silent does not count
        ("AAAA", HEALTH, {}, Permit(("p1", "p2"), "00")),  # K witnesses, not every PoP
        ("W", HEALTH, {"min_pops": 0}, Permit((), "00")),
        ("AW", HEALTH, {"override": True}, Permit((), "00")),  # the override lifts K
        ("AAA", HEALTH, {"frozen": True}, RefusalReason.FROZEN),
        ("AAA", DRAIN, {"frozen": True}, Permit(("p1", "p2"), None)),  # freeze: health only
        ("AAA", HEALTH, {"free_slots": ()}, RefusalReason.BUDGET),
        ("AAA", DRAIN, {"free_slots": ()}, Permit(("p1", "p2"), None)),  # drains take no slot
        ("AW", DRAIN, {}, RefusalReason.TOO_FEW),  # drains pass K too
    ],
)
def test_guard_decision(states: str, kind: WithdrawKind, kw: dict[str, Any], expected: Any) -> None:
    got = guard_decision(view(states, kind, **kw))
    if isinstance(expected, RefusalReason):
        assert isinstance(got, Refused) and got.reason is expected, got
    else:
        assert got == expected


def test_a_refusal_says_how_many_announce() -> None:
    got = guard_decision(view("AAW"))
    assert isinstance(got, Refused) and got.detail == "1 other PoP(s) announce, min_pops is 2"


# --- the mode machine -------------------------------------------------------------------------


def live(last_ok: float | None = 10.0, lease: bool = True, down: float | None = None) -> Liveness:
    return Liveness(last_ok, lease, down, published=True)


@pytest.mark.parametrize(
    ("mode", "seen", "now", "expected"),
    [
        (FleetMode.DEGRADED, live(), 10.0, FleetMode.CONNECTED),
        (FleetMode.DEGRADED, Liveness(10.0, True, None, published=False), 10.0, FleetMode.DEGRADED),
        (FleetMode.DEGRADED, live(down=9.0), 10.0, FleetMode.DEGRADED),  # no watch, no view
        (FleetMode.DEGRADED, live(lease=False), 10.0, FleetMode.DEGRADED),
        (FleetMode.CONNECTED, live(), 14.9, FleetMode.CONNECTED),
        (FleetMode.CONNECTED, live(), 15.1, FleetMode.DEGRADED),  # 5 s without an answer
        (FleetMode.CONNECTED, live(last_ok=None), 1.0, FleetMode.DEGRADED),
        (FleetMode.CONNECTED, live(down=10.0), 11.9, FleetMode.CONNECTED),  # a re-watch is quick
        (FleetMode.CONNECTED, live(last_ok=12.0, down=10.0), 12.1, FleetMode.DEGRADED),
        (FleetMode.CONNECTED, live(lease=False), 10.0, FleetMode.DEGRADED),
        (FleetMode.STANDALONE, live(last_ok=None), 99.0, FleetMode.STANDALONE),
    ],
)
def test_mode_machine(mode: FleetMode, seen: Liveness, now: float, expected: FleetMode) -> None:
    got, why = next_mode(mode, seen, now, stale_after_s=5.0, watch_grace_s=2.0)
    assert got is expected
    assert bool(why) == (got is not mode)


# --- the PoP holding withdraws ----------------------------------------------------------------


API = "192.0.2.20/32"


def fleet_config(
    fleet: dict[str, Any] | None = FLEET, targets: int = 1, api: bool = False
) -> AgentConfig:
    services = [{"name": "web", "prefixes": [WEB], "med": 100, "targets": tcp_targets(targets)}]
    if api:
        services.append({"name": "api", "prefixes": [API], "med": 100, "targets": tcp_targets(1)})
    return pop_config(
        (N1,),
        services,
        defaults={"drain_grace": 30, "ramp": {"stages": [100]}, "min_update_interval": 0},
        **({"fleet": fleet} if fleet else {}),
    )


def fleet_pop(fleet: dict[str, Any] | None = FLEET, targets: int = 1) -> Playbook:
    pb = Playbook(fleet_config(fleet, targets))
    pb.sync()
    pb.health(0, "h" * targets)
    return pb


def published(commands: list[Command]) -> list[dict[str, Announcing]]:
    return [dict(c.states) for c in commands if isinstance(c, Publish)]


def asks(commands: list[Command]) -> list[AskGuard]:
    return [c for c in commands if isinstance(c, AskGuard)]


def connect(pb: Playbook, t: float) -> list[Command]:
    return pb.send(FleetModeChanged(pb.at(t), FleetMode.CONNECTED, "test")) + pb.tick(t)


def test_standalone_withdraws_at_once_and_publishes_nothing() -> None:
    pb = fleet_pop(fleet=None)
    out = pb.health(1, "x")
    assert [type(c) for c in routes_of(out)] == [Withdraw]
    assert published(pb.log) == [] and asks(pb.log) == []
    assert pb.pop.snapshot().fleet_mode is FleetMode.STANDALONE


def test_a_connected_health_withdraw_waits_for_the_permit_then_goes() -> None:
    pb = fleet_pop()
    assert published(pb.log)[-1] == {"web": A}
    connect(pb, 0.5)
    out = pb.health(1, "x")
    assert asks(out) == [AskGuard("web", HEALTH)]
    assert routes_of(out) == []  # nothing moves while the guard is asked
    assert pb.service().phase is Phase.GUARDED
    assert "asking the fleet guard (health withdraw)" in pb.service().guard
    assert asks(pb.tick(1.5)) == []  # one question at a time
    out = pb.send(GuardAnswered(pb.at(1.6), "web", None, "committed")) + pb.tick(1.6)
    assert [type(c) for c in routes_of(out)] == [Withdraw]
    assert published(out) == [{"web": W}]
    assert pb.service().phase is Phase.DOWN


def test_a_refused_withdraw_stays_de_preferred_and_asks_again_on_a_view_change() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    pb.health(1, "x")
    detail = "1 other PoP(s) announce, min_pops is 2"
    out = pb.send(GuardAnswered(pb.at(1.1), "web", RefusalReason.TOO_FEW, detail)) + pb.tick(1.1)
    [announce] = routes_of(out)
    assert isinstance(announce, Announce)
    assert announce.attrs.med == MED_DRAIN and GRACEFUL_SHUTDOWN in announce.attrs.communities
    assert published(out) == [{"web": D}]
    assert pb.pop.snapshot().guard_refusals == {RefusalReason.TOO_FEW: 1}
    assert "withdraw refused: too few other PoPs announcing" in pb.service().reason
    assert asks(pb.tick(2)) == []  # nothing changed: no new question before REASK_S
    out = pb.send(FleetViewChanged(pb.at(2.5))) + pb.tick(2.5)
    assert asks(out) == [AskGuard("web", HEALTH)]
    pb.send(GuardAnswered(pb.at(2.6), "web", RefusalReason.TOO_FEW, detail))
    assert asks(pb.tick(2.6 + REASK_S - 0.1)) == []
    assert asks(pb.tick(2.6 + REASK_S)) == [AskGuard("web", HEALTH)]  # and at least every REASK_S
    assert not any(isinstance(c, Withdraw) for c in pb.log)  # de-preferred all along
    assert pb.meds() == {MED_DRAIN}


def test_a_fleet_change_while_the_question_is_out_asks_again_at_once() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    assert asks(pb.health(1, "x")) == [AskGuard("web", HEALTH)]
    pb.send(FleetViewChanged(pb.at(1.1)))  # another PoP came back while we asked
    pb.send(GuardAnswered(pb.at(1.2), "web", RefusalReason.TOO_FEW, "0 other"))
    assert asks(pb.tick(1.2)) == [AskGuard("web", HEALTH)]  # not after REASK_S


def test_a_held_withdraw_is_not_asked_for_while_a_target_recovers() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    pb.health(1, "x")
    pb.send(GuardAnswered(pb.at(1.1), "web", RefusalReason.TOO_FEW, "0 other"))
    pb.tick(1.1)
    pb.result(2, "e0", True)  # recovering: one success
    assert pb.pop.targets["web"][0].health.state is TargetState.RECOVERING
    out = pb.send(FleetViewChanged(pb.at(2.1))) + pb.tick(2.1) + pb.tick(2.1 + REASK_S)
    assert asks(out) == [] and not any(isinstance(c, Withdraw) for c in out)
    out = pb.health(9, "h")  # back: announced normally, never withdrawn
    assert [c.attrs.med for c in routes_of(out) if isinstance(c, Announce)] == [100]
    assert not any(isinstance(c, Withdraw) for c in pb.log)


def test_degraded_never_withdraws_and_never_asks() -> None:
    pb = fleet_pop()  # never connected: DEGRADED from the start
    out = pb.health(1, "x")
    assert asks(out) == []
    [announce] = routes_of(out)
    assert isinstance(announce, Announce) and announce.attrs.med == MED_DRAIN
    assert pb.pop.snapshot().fleet_mode is FleetMode.DEGRADED
    assert pb.pop.snapshot().guard_refusals == {RefusalReason.DEGRADED: 1}
    for t in range(2, 30):
        assert routes_of(pb.tick(t)) == [] and asks(pb.log) == []
    # etcd back: the withdraw asks at once.
    assert asks(connect(pb, 30)) == [AskGuard("web", HEALTH)]


def test_recovery_while_asking_keeps_the_routes_and_a_late_permit_withdraws_nothing() -> None:
    pb = fleet_pop(targets=1)
    connect(pb, 0.5)
    pb.health(1, "x")
    pb.health(2, "h")
    out = pb.send(GuardAnswered(pb.at(3), "web", None, "committed")) + pb.tick(3)
    assert routes_of(out) == []
    assert pb.service().phase is Phase.UP and pb.routes()[RouteKey(N1, WEB)].med == 100
    # A permit is for one withdraw: the next failure asks again.
    assert asks(pb.health(4, "x")) == [AskGuard("web", HEALTH)]


def test_a_drain_de_prefers_for_its_grace_then_asks_as_a_drain() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    pb.request(1, DrainRequest("web", "maintenance", "op"))
    out = pb.tick(1)
    assert asks(out) == [] and published(out) == [{"web": D}]
    assert asks(pb.tick(30)) == []
    out = pb.tick(31)
    assert asks(out) == [AskGuard("web", DRAIN)] and routes_of(out) == []
    out = pb.send(GuardAnswered(pb.at(31.1), "web", None, "committed")) + pb.tick(31.1)
    assert [type(c) for c in routes_of(out)] == [Withdraw]


def test_a_session_down_is_published_silent_without_asking() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    out = pb.send(NeighborChanged(pb.at(1), N1, NeighborState.DOWN, "hold timer expired"))
    assert published(out) == [{"web": S}] and asks(out) == []


def test_a_break_glass_drain_withdraws_without_etcd_after_its_grace_and_says_so() -> None:
    pb = fleet_pop()  # DEGRADED: etcd was never reached
    reply = pb.request(1, DrainRequest("web", "black-holing", "op", override_fleet=True))
    assert reply.refusal is None
    assert any("OVERRIDING THE FLEET GUARD" in line for line in pb.logs())
    assert [c.attrs.med for c in routes_of(pb.tick(1)) if isinstance(c, Announce)] == [MED_DRAIN]
    out = pb.tick(31)
    assert [type(c) for c in routes_of(out)] == [Withdraw] and asks(out) == []
    assert "withdrawing web WITHOUT the fleet guard: drain --override-fleet" in pb.logs()
    assert pb.service().guard_overridden and pb.service().phase is Phase.DRAINED
    pb.request(40, UndrainRequest("web", "op"))
    pb.tick(40)
    assert not pb.service().guard_overridden


@pytest.mark.parametrize(
    "request_",
    [
        DrainRequest("web", "r", "op", neighbor=N1, override_fleet=True),
        DrainRequest(None, "r", "op", on_stop=True, override_fleet=True),
    ],
)
def test_break_glass_is_for_a_drain_of_a_service_or_the_pop(request_: DrainRequest) -> None:
    pb = fleet_pop()
    refusal = pb.request(1, request_).refusal
    assert refusal is not None
    assert refusal.message == "--override-fleet is for a drain of a service or the PoP"


def test_a_service_a_reload_drops_drains_out_through_the_guard_under_its_name() -> None:
    pb = Playbook(fleet_config(api=True))
    pb.sync()
    pb.health(0, "h")
    pb.health(0, "h", service="api")
    connect(pb, 0.5)
    assert pb.pop.fleet.publishing == {"web": A, "api": A}
    cfg = fleet_config()
    pb.send(ConfigSwapped(pb.at(1), pop_spec(cfg)))
    out = pb.tick(1)
    assert [c.attrs.med for c in routes_of(out) if isinstance(c, Announce)] == [MED_DRAIN]
    assert pb.pop.fleet.publishing == {"web": A, "api": D}  # still counted while it drains out
    out = pb.tick(31)
    assert asks(out) == [AskGuard("api", DRAIN)] and routes_of(out) == []
    out = pb.send(GuardAnswered(pb.at(31.1), "api", RefusalReason.TOO_FEW, "0 other")) + pb.tick(
        31.1
    )
    assert routes_of(out) == [] and RouteKey(N1, API) in pb.routes()
    out = pb.send(FleetViewChanged(pb.at(32))) + pb.tick(32)
    assert asks(out) == [AskGuard("api", DRAIN)]
    out = pb.send(GuardAnswered(pb.at(32.1), "api", None, "committed")) + pb.tick(32.1)
    assert routes_of(out) == [Withdraw(RouteKey(N1, API), f"{API} left the config: drained out")]
    assert pb.pop.fleet.publishing == {"web": A, "api": W}
    pb.tick(33)
    assert pb.pop.fleet.publishing == {"web": A}  # gone: its key is deleted


def test_at_start_a_route_the_last_good_config_named_drains_out_through_the_guard() -> None:
    cfg = fleet_config()
    pb = Playbook(cfg)
    held = {RouteKey(N1, WEB): RouteAttrs(100), RouteKey(N1, API): RouteAttrs(100)}
    pb.send(Synced(pb.at(0), {N1: NeighborState.ESTABLISHED}, held, {RouteKey(N1, API): "api"}))
    pb.tick(0)
    pb.health(0, "h")
    connect(pb, 0.5)
    assert asks(pb.tick(31)) == [AskGuard("api", DRAIN)]


def test_a_lost_answer_is_a_refusal() -> None:
    pb = fleet_pop()
    connect(pb, 0.5)
    pb.health(1, "x")
    out = pb.send(GuardAnswered(pb.at(3), "web", RefusalReason.UNANSWERED, "deadline")) + pb.tick(3)
    assert [c.attrs.med for c in routes_of(out) if isinstance(c, Announce)] == [MED_DRAIN]
    assert pb.pop.snapshot().guard_refusals == {RefusalReason.UNANSWERED: 1}
