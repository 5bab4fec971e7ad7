"""Transcripts of checker faults (DESIGN §3.2a): a fault of the agent's own machinery freezes
health instead of failing targets; only target failures move the state machines."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from anycast_agent.core.commands import Withdraw
from anycast_agent.core.events import CanaryObserved, DrainRequest, ProbeObserved, VipsListed
from anycast_agent.core.traffic import Phase
from anycast_agent.model import CheckerFault, ProbeResult, TargetState
from anycast_agent.probes.base import checker_fault
from tests.unit.core.playbook import Playbook, pop_config, routes_of, tcp_targets

WEB = "192.0.2.10/32"
EMFILE = ProbeResult(False, 0.0, "connect failed: Too many open files", checker=CheckerFault.EMFILE)


def started(targets: int = 2, min_healthy: int = 1, **top: Any) -> Playbook:
    web = {
        "name": "web",
        "prefixes": [WEB],
        "targets": tcp_targets(targets),
        "min_healthy": min_healthy,
    }
    cfg = pop_config(["198.51.100.1"], [web], defaults={"ramp": {"stages": [100]}}, **top)
    pb = Playbook(cfg)
    pb.sync()
    return pb


def fault(pb: Playbook, t: float, target: str, result: ProbeResult = EMFILE) -> None:
    pb.send(ProbeObserved(pb.at(t), "web", target, result))


def test_checker_faults_leave_every_state_as_it_was_and_withdraw_nothing() -> None:
    pb = started()
    pb.health(0, "hh")
    for t in range(1, 30):
        fault(pb, t, "e0")
        fault(pb, t, "e1")
        assert routes_of(pb.tick(t)) == []
    web = pb.service()
    assert [x.state for x in web.targets] == [TargetState.HEALTHY, TargetState.HEALTHY]
    assert [x.checker_fault for x in web.targets] == [CheckerFault.EMFILE, CheckerFault.EMFILE]
    assert web.frozen and "health frozen: checker fault (e0 EMFILE, e1 EMFILE)" in web.reason
    assert pb.pop.snapshot().checker_faults[CheckerFault.EMFILE] == 2
    logs = [x for x in pb.logs() if "checker fault EMFILE" in x]
    assert len(logs) == 2  # once per target, not once per result
    pb.result(30, "e0", True)
    pb.result(30, "e1", True)
    pb.tick(30)
    assert not pb.service().frozen and pb.pop.snapshot().checker_faults[CheckerFault.EMFILE] == 0
    assert "target web/e0 checker fault over: probing works again" in pb.logs()


def test_a_frozen_service_ignores_target_failures_until_the_checker_works() -> None:
    # e1's checks are dropped by the agent's own firewall (EPERM) while e0 really dies: the
    # service keeps its last decision until the checker can see again.
    eperm = ProbeResult(False, 0.0, "connect: Operation not permitted", checker=CheckerFault.EPERM)
    pb = started(min_healthy=2)
    pb.health(0, "hh")
    fault(pb, 1, "e1", eperm)
    pb.health(2, "xu")
    assert pb.service().phase is Phase.UP and pb.routes()
    pb.result(3, "e1", True)  # the checker sees e1 again: e0's failure now counts
    [withdraw] = routes_of(pb.tick(3))
    assert isinstance(withdraw, Withdraw)


def test_intents_still_apply_while_frozen() -> None:
    pb = started()
    pb.health(0, "hh")
    fault(pb, 1, "e0")
    fault(pb, 1, "e1")
    pb.request(1, DrainRequest("web", "maintenance", "op"))
    pb.tick(1)
    assert pb.service().phase is Phase.DRAINING


def test_a_probe_bug_is_a_target_failure_and_counted() -> None:
    pb = started(targets=1)
    pb.health(0, "h")
    bug = ProbeResult(False, 0.0, "probe error: KeyError('x')", bug=True)
    for t in (1, 2, 3):
        pb.send(ProbeObserved(pb.at(t), "web", "e0", bug))
    [withdraw] = routes_of(pb.tick(3))
    assert isinstance(withdraw, Withdraw)
    assert pb.service().targets[0].probe_bugs == 3


def test_a_checker_blind_past_checker_fault_max_stops_counting_as_progress() -> None:
    pb = started(checker_fault_max="60s")
    pb.health(0, "hh")
    for t in range(1, 100):
        fault(pb, t, "e0")
        fault(pb, t, "e1")
        pb.tick(t)
    # The decision loop still runs, but probing made no progress after 1 + 60 s: the watchdog
    # (fed only while both progress) fails the PoP closed, as for a hang.
    assert pb.pop.last_progress == pytest.approx(60)
    assert pb.routes()  # never withdrawn by the agent itself


def test_a_failing_canary_freezes_every_service() -> None:
    pb = started()
    pb.health(0, "hh")
    dead = ProbeResult(False, 0.8, "timeout after 0.8s")
    pb.send(CanaryObserved(pb.at(1), dead))
    pb.health(2, "xx")
    assert pb.service().phase is Phase.UP and pb.service().frozen
    assert pb.pop.snapshot().checker_faults[CheckerFault.CANARY] == 1
    pb.send(CanaryObserved(pb.at(3), ProbeResult(True, 0.001)))
    assert [type(c) for c in routes_of(pb.tick(3))] == [Withdraw]
    assert "canary answers again: probing works" in pb.logs()


def test_a_netlink_error_keeps_the_last_listing() -> None:
    web = {"name": "web", "prefixes": [WEB], "targets": tcp_targets(1)}
    cfg = pop_config(["198.51.100.1"], [web], addresses={"mode": "check"})
    pb = Playbook(cfg)
    pb.sync()
    pb.send(VipsListed(pb.at(0), frozenset({"192.0.2.10"})))
    pb.health(0, "h")
    for t in (1, 2, 3):
        pb.send(VipsListed(pb.at(t), None, "netlink: Operation not permitted"))
        assert routes_of(pb.tick(t)) == []
    assert pb.pop.snapshot().checker_faults[CheckerFault.NETLINK] == 1
    assert sum("keeping the last listing" in x for x in pb.logs()) == 1
    pb.send(VipsListed(pb.at(4), frozenset()))  # works again, and the address is gone
    [withdraw] = routes_of(pb.tick(4))
    assert withdraw.cause == f"address of {WEB} missing on lo"


def test_a_wall_clock_step_neither_cuts_nor_stretches_a_drain_grace() -> None:
    pb = started()
    pb.health(0, "hh")
    pb.request(10, DrainRequest("web", "maintenance", "op"))
    pb.tick(11, wall=pb.at(11).wall + 3600)  # the clock jumps an hour ahead
    assert pb.service().phase is Phase.DRAINING
    pb.tick(20, wall=pb.at(20).wall - 3600)  # and an hour back
    assert pb.service().phase is Phase.DRAINING
    pb.tick(40)
    assert pb.service().phase is Phase.DRAINED  # 30 s after it began, on the monotonic clock


@pytest.mark.parametrize(
    ("exc", "spawn", "expected"),
    [
        (OSError(errno.EMFILE, "Too many open files"), False, CheckerFault.EMFILE),
        (OSError(errno.ENFILE, "File table overflow"), False, CheckerFault.ENFILE),
        (OSError(errno.ENOBUFS, "No buffer space"), False, CheckerFault.ENOBUFS),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign"), False, CheckerFault.EADDRNOTAVAIL),
        (OSError(errno.EPERM, "Operation not permitted"), False, CheckerFault.EPERM),
        (OSError(errno.EACCES, "Permission denied"), False, CheckerFault.EACCES),
        (OSError(errno.EAGAIN, "Resource temporarily unavailable"), True, CheckerFault.EAGAIN),
        (OSError(errno.EAGAIN, "Resource temporarily unavailable"), False, None),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), False, CheckerFault.RESOLVER),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False, None),
        (ConnectionResetError(errno.ECONNRESET, "reset"), False, None),
        (OSError(errno.EHOSTUNREACH, "No route to host"), False, None),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), False, None),
        (TimeoutError(), False, None),
        (ValueError("bad"), False, None),
    ],
)
def test_where_a_failure_happened(
    exc: BaseException, spawn: bool, expected: CheckerFault | None
) -> None:
    assert checker_fault(exc, spawn=spawn) is expected
