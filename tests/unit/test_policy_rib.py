"""Transcript tests for service decisions and the route diff: health in, commands out."""

from __future__ import annotations

from anycast_agent.config import service_spec
from anycast_agent.core.commands import Announce, Withdraw
from anycast_agent.core.health import Health
from anycast_agent.core.policy import decide
from anycast_agent.core.rib import Rib
from anycast_agent.model import RouteAttrs, RouteKey, TargetState
from tests.unit.builders import make_config

S = TargetState
H = {
    "u": Health(S.UNKNOWN),
    "h": Health(S.HEALTHY),
    "s": Health(S.SUSPICIOUS),
    "x": Health(S.UNHEALTHY),
    "r": Health(S.RECOVERING),
}


def healths(code: str) -> list[Health]:
    return [H[c] for c in code]


def status(code: str, **svc: object) -> str:
    cfg = make_config()
    service = service_spec(cfg, cfg.services[0].model_copy(update=svc))
    return decide(service, healths(code)).status.value


def test_quorum_transcript() -> None:
    assert status("uu") == "unknown"
    assert status("hu") == "up"
    assert status("su") == "up"  # suspicious has not failed `fall` times yet
    assert status("xu") == "unknown"  # edge2 may still come up
    assert status("xx") == "down"
    assert status("xr") == "down"  # recovering is not healthy yet
    assert status("uu", min_healthy=2) == "unknown"
    assert status("hx", min_healthy=2) == "down"
    assert status("hh", min_healthy="100%") == "up"
    assert status("hx", min_healthy="50%") == "up"


K1 = RouteKey("198.51.100.1", "192.0.2.10/32")
K2 = RouteKey("198.51.100.1", "192.0.2.99/32")
K3 = RouteKey("198.51.100.5", "192.0.2.10/32")
A = RouteAttrs(med=100)
ALLOWED = {K1}


def test_rib_transcript() -> None:
    rib = Rib()
    # First decision: announce.
    [cmd] = rib.plan({K1: A}, ALLOWED, now=0)
    assert cmd == Announce(K1, A, "service up")
    rib.accepted(cmd)
    # Same wanted state: nothing (ExaBGP would send nothing anyway, but we do not even ask).
    assert rib.plan({K1: A}, ALLOWED, now=1) == []
    # MED change: one announce.
    [cmd] = rib.plan({K1: RouteAttrs(med=200)}, ALLOWED, now=2)
    assert isinstance(cmd, Announce) and cmd.attrs.med == 200
    rib.accepted(cmd)
    # Down: one withdraw, never repeated.
    [cmd] = rib.plan({K1: None}, ALLOWED, now=3, causes={"192.0.2.10/32": "why"})
    assert cmd == Withdraw(K1, "why")
    rib.accepted(cmd)
    assert rib.plan({K1: None}, ALLOWED, now=4) == []


def test_unknown_service_keeps_what_exabgp_holds() -> None:
    rib = Rib(held={K1: A})
    assert rib.plan({}, ALLOWED, now=0) == []


def test_held_route_outside_the_config_is_withdrawn_once() -> None:
    # K2: prefix no longer configured; K3: neighbor no longer one of the service's.
    rib = Rib(held={K1: A, K2: A, K3: A})
    cmds = rib.plan({}, ALLOWED, now=0)
    cause = "no longer configured for this neighbor"
    assert cmds == [Withdraw(K2, cause), Withdraw(K3, cause)]
    for c in cmds:
        rib.accepted(c)
    assert rib.plan({}, ALLOWED, now=0) == []


def test_refused_announce_waits_then_retries() -> None:
    rib = Rib()
    [cmd] = rib.plan({K1: A}, ALLOWED, now=0)
    rib.refused(cmd, now=0)
    assert rib.plan({K1: A}, ALLOWED, now=10) == []
    assert rib.next_retry(now=10) == 30
    assert rib.plan({K1: A}, ALLOWED, now=30) == [Announce(K1, A, "service up")]
    assert rib.next_retry(now=30) is None  # a past refusal never makes the loop spin


def test_refused_med_change_does_not_hold_back_a_withdraw() -> None:
    rib = Rib(held={K1: A})
    [cmd] = rib.plan({K1: RouteAttrs(med=600)}, ALLOWED, now=0)
    rib.refused(cmd, now=0)
    # ExaBGP still holds the old route: a service going down withdraws it at once.
    assert rib.plan({K1: None}, ALLOWED, now=1) == [Withdraw(K1, "service down")]


def test_unanswered_announce_counts_as_held_and_is_withdrawn_when_down() -> None:
    rib = Rib()
    [cmd] = rib.plan({K1: A}, ALLOWED, now=0)
    rib.unanswered(cmd, retry_at=30)
    assert rib.plan({K1: A}, ALLOWED, now=1) == []
    assert rib.plan({K1: A}, ALLOWED, now=30) == [Announce(K1, A, "service up")]
    assert rib.plan({K1: None}, ALLOWED, now=2) == [Withdraw(K1, "service down")]


def test_unanswered_withdraw_is_retried_later() -> None:
    rib = Rib(held={K1: A})
    [cmd] = rib.plan({K1: None}, ALLOWED, now=0)
    rib.unanswered(cmd, retry_at=30)
    assert rib.plan({K1: None}, ALLOWED, now=1) == []
    assert rib.plan({K1: None}, ALLOWED, now=30) == [Withdraw(K1, "service down")]


def test_refused_withdraw_is_not_repeated() -> None:
    rib = Rib(held={K1: A})
    [cmd] = rib.plan({K1: None}, ALLOWED, now=0)
    rib.refused(cmd, now=0)
    assert rib.plan({K1: None}, ALLOWED, now=60) == []


def test_neighbor_up_resends_announces_but_keeps_routes_held() -> None:
    rib = Rib(held={K1: A})
    rib.resend_neighbor("198.51.100.1")
    assert rib.plan({K1: A}, ALLOWED, now=0) == [Announce(K1, A, "service up")]
    # A service still unknown sends nothing; one that goes down is still withdrawn.
    assert rib.plan({}, ALLOWED, now=0) == []
    assert rib.plan({K1: None}, ALLOWED, now=0) == [Withdraw(K1, "service down")]
