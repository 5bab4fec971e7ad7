"""Proves the netns lab harness: namespaces come and go, BIRD sees ExaBGP's routes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.bird_output import ImportCounters, parse_protocol, parse_routes
from tests.lab.description import LabDescription
from tests.lab.exabgp import ExabgpNeighbor, ExabgpProcess, render_exabgp_conf
from tests.lab.netns import list_namespaces
from tests.lab.prereqs import require_lab
from tests.lab.processes import ProcessRegistry
from tests.lab.topology import PopLab, PopLabFactory
from tests.lab.wait import assert_holds, wait_for

pytest_plugins = ["tests.lab.fixtures"]

VIP = "192.0.2.10/32"
VIP6 = "2001:db8::10/128"


# -- pure parts --------------------------------------------------------------------------------

ROUTES_SAMPLE = """BIRD 2.0.12 ready.
Table master4:
192.0.2.10/32        unicast [pop0_v4 00:14:11.039] * (100) [AS65001i]
\tvia 198.51.100.2 on up0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65001 65001 65001
\tBGP.next_hop: 198.51.100.2
\tBGP.med: 4294967294
\tBGP.local_pref: 100
\tBGP.community: (65001,100) (65535,0)
                     unicast [pop1_v4 00:14:12.001 from 198.51.100.6] (100) [AS65001i]
\tvia 198.51.100.6 on up1
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65001
\tBGP.next_hop: 198.51.100.6
\tBGP.local_pref: 100

Table master6:
2001:db8::10/128     unicast [pop0_v6 00:14:11.040] * (100) [AS65001i]
\tvia 2001:db8:100::2 on up0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65001
\tBGP.next_hop: 2001:db8:100::2 fe80::1
\tBGP.med: 100
\tBGP.local_pref: 100
\tBGP.large_community: (65001, 1, 2)
"""

PROTOCOL_SAMPLE = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
pop1       BGP        ---        up     00:14:10.998  Established
  BGP state:          Established
    Neighbor address: 198.51.100.2
  Channel ipv4
    State:          UP
    Table:          master4
    Routes:         1 imported, 0 exported, 1 preferred
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              3          0          0          1          2
      Import withdraws:            1          0        ---          0          1
      Export updates:              1          1          0        ---          0
      Export withdraws:            0        ---        ---        ---          0
  Channel ipv6
    State:          DOWN
    Table:          master6
"""


def test_parse_routes_keeps_every_route_and_attribute() -> None:
    routes = parse_routes(ROUTES_SAMPLE)
    assert sorted(routes) == ["192.0.2.10/32", "2001:db8::10/128"]
    first, second = routes["192.0.2.10/32"]
    assert (first.protocol, first.primary, first.gateway) == ("pop0_v4", True, "198.51.100.2")
    assert first.as_path == (65001, 65001, 65001)
    assert first.med == 4294967294
    assert first.communities == ("65001:100", "65535:0")
    assert (second.protocol, second.primary, second.neighbor) == ("pop1_v4", False, "198.51.100.6")
    assert second.med is None and second.communities == ()
    (v6,) = routes["2001:db8::10/128"]
    assert v6.next_hop == "2001:db8:100::2"
    assert v6.large_communities == ("65001:1:2",)


def test_parse_protocol_reads_state_and_import_counters() -> None:
    status = parse_protocol(PROTOCOL_SAMPLE)
    assert (status.name, status.state, status.bgp_state) == ("pop1", "up", "Established")
    assert status.channels["ipv4"].imported_routes == 1
    assert status.import_counters("ipv4") == ImportCounters(
        updates_received=3,
        updates_ignored=1,
        updates_accepted=2,
        withdraws_received=1,
        withdraws_accepted=1,
    )
    assert status.import_counters("ipv6") == ImportCounters()
    assert status.import_counters().messages_received == 4


def test_description_scales_sessions_over_slash30_links() -> None:
    single = LabDescription.build()
    assert [(s.upstream_address, s.pop_address) for s in single.sessions] == [
        ("198.51.100.1", "198.51.100.2")
    ]
    assert single.links[0].pop_v6 == "2001:db8:100::2/64"
    four = LabDescription.build(links=4, ipv6_sessions=True)
    v4 = [(s.upstream_address, s.pop_address) for s in four.sessions if s.families == ("ipv4",)]
    assert v4 == [
        ("198.51.100.1", "198.51.100.2"),
        ("198.51.100.5", "198.51.100.6"),
        ("198.51.100.9", "198.51.100.10"),
        ("198.51.100.13", "198.51.100.14"),
    ]
    assert four.session("pop3_v6").pop_address == "2001:db8:100:3::2"
    assert four.edge_addresses == ("203.0.113.11", "203.0.113.12", "203.0.113.13")


def test_exabgp_conf_has_what_both_versions_need() -> None:
    conf = render_exabgp_conf(
        [
            ExabgpNeighbor(
                "198.51.100.1", "198.51.100.2", "198.51.100.2", 65001, 65000, processes=("agent",)
            )
        ],
        [ExabgpProcess("agent", ("/usr/bin/env", "anycast-agent", "run"))],
    )
    assert "local-address 198.51.100.2;" in conf
    assert "api { processes [ agent ]; neighbor-changes; }" in conf
    assert "run /usr/bin/env anycast-agent run;" in conf
    with pytest.raises(ValueError, match="hold-time"):
        render_exabgp_conf([ExabgpNeighbor("a", "b", "c", 1, 2, hold_time_s=2)])


def test_wait_for_reports_last_observation() -> None:
    values = iter(range(1000))
    with pytest.raises(AssertionError, match=r"last observed: \d+"):
        wait_for(lambda: next(values), lambda v: v < 0, timeout_s=0.1, what="negative")
    assert wait_for(lambda: 1, timeout_s=0.1) < 0.1
    with pytest.raises(AssertionError, match="broke"):
        counter = iter(range(1000))
        assert_holds(lambda: next(counter), lambda v: v < 3, duration_s=1.0)


def test_require_lab_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYCAST_TEST_EXABGP_42", "/nonexistent/exabgp")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ANYCAST_TEST_EXABGP_42"):
        require_lab("4.2")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=r"ExaBGP 4\.2"):
        require_lab("4.2")


# -- the lab itself ------------------------------------------------------------------------------


def test_namespaces_exist_during_and_vanish_after() -> None:
    require_lab()
    lab = PopLab()
    names = {f"{lab.lab_id}-u", f"{lab.lab_id}-p"}
    # Only this lab's names: parallel runs may own other aa- namespaces right now.
    assert not names & list_namespaces()
    with lab:
        assert {ns.name for ns in lab.netns} == names
        assert all(n.startswith("aa-") and len(n) <= 15 for n in names)
        assert names <= list_namespaces()
        assert "198.51.100.2/24" in lab.pop.ip("-o", "address", "show", "dev", "pop0").stdout
        assert "203.0.113.11/32" in lab.pop.ip("-o", "address", "show", "dev", "lo").stdout
        bird_pid = lab.bird.proc.pid if lab.bird.proc else -1
        workdir = lab.workdir
    assert not names & list_namespaces()
    assert not Path(f"/proc/{bird_pid}").exists() or _is_zombie_or_gone(bird_pid)
    assert not workdir.exists()


def test_teardown_after_exception_still_cleans_up() -> None:
    require_lab()
    with pytest.raises(ZeroDivisionError) as raised, PopLab() as lab:
        names = {ns.name for ns in lab.netns}
        edge = lab.start_edge(0)
        1 / 0  # noqa: B018
    assert not names & list_namespaces()
    assert edge.proc is not None and edge.proc.poll() is not None
    assert any("work dir kept" in note for note in raised.value.__notes__)
    subprocess.run(["rm", "-rf", str(lab.workdir)], check=True)


def test_session_route_counters_and_withdraw_on_sigterm(pop_lab: PopLab) -> None:
    bird = pop_lab.bird
    exa = pop_lab.start_exabgp()
    bird.wait_established(timeout_s=10)
    bird.wait_route(VIP, timeout_s=5)
    (route,) = bird.route(VIP)
    assert route.med == 100
    assert route.as_path == (65001,)
    assert route.neighbor == "198.51.100.2" and route.next_hop == "198.51.100.2"
    counters = bird.import_counters("pop0_v4")
    assert (counters.updates_received, counters.updates_accepted) == (1, 1)
    assert counters.withdraws_received == 0
    # Nothing else arrives while ExaBGP idles (no duplicate announce, no withdraw).
    assert_holds(lambda: bird.import_counters("pop0_v4"), lambda c: c == counters, duration_s=0.3)
    api_log = pop_lab.workdir / "stub.api-in"
    wait_for(api_log.read_text, lambda t: '"state": "up"' in t and "done" in t, timeout_s=3)

    assert exa.stop() is not None
    bird.wait_route(VIP, present=False, timeout_s=3)
    assert bird.protocol_state("pop0_v4") != "Established"


def test_kill9_drops_the_session_at_once(pop_lab: PopLab) -> None:
    bird = pop_lab.bird
    exa = pop_lab.start_exabgp()
    bird.wait_route(VIP, timeout_s=10)
    exa.kill9()
    # The kernel closes the TCP socket of a killed process, so BIRD drops the session at once.
    bird.wait_route(VIP, present=False, timeout_s=5)


def test_many_sessions_ipv4_and_ipv6(pop_lab_factory: PopLabFactory, exabgp_version: str) -> None:
    lab = pop_lab_factory(exabgp_version=exabgp_version, links=4, ipv6_sessions=True)
    lab.start_exabgp(
        [
            lab.stub_process(
                [
                    f"announce route {VIP} next-hop self med 100",
                    f"announce route {VIP6} next-hop self med 100",
                ]
            )
        ]
    )
    lab.bird.wait_established(timeout_s=10)
    lab.bird.wait_route(VIP, count=4, timeout_s=5)
    lab.bird.wait_route(VIP6, count=4, timeout_s=5)
    neighbors = sorted(r.neighbor or "" for r in lab.bird.route(VIP))
    assert neighbors == sorted(["198.51.100.2", "198.51.100.6", "198.51.100.10", "198.51.100.14"])
    assert {r.protocol for r in lab.bird.route(VIP6)} == {f"pop{i}_v6" for i in range(4)}


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_edge_faults(pop_lab: PopLab) -> None:
    edge = pop_lab.start_edge(0)
    tcp = pop_lab.start_edge(1, mode="tcp", port=443)

    def status() -> str:
        return _http_status(pop_lab, edge.url)

    assert status() == "200"
    edge.set_status(500)
    assert status() == "500"
    edge.set_status(200)
    edge.sigstop()
    assert status() == "timeout"
    edge.sigcont()
    assert status() == "200"
    edge.kill()
    assert status() == "refused"
    edge.restart()
    assert status() == "200"
    assert _tcp_connect(pop_lab, tcp.address, 443) == "ok"
    tcp.kill()
    assert _tcp_connect(pop_lab, tcp.address, 443) == "refused"


def test_exabgp_sigterm_ends_its_api_process(pop_lab: PopLab) -> None:
    exa = pop_lab.start_exabgp()
    pop_lab.bird.wait_route(VIP, timeout_s=10)
    in_ns = set(pop_lab.pop.pids())
    assert exa.pid in in_ns and len(in_ns) >= 2  # ExaBGP and the stub API process
    exa.send_signal(signal.SIGTERM)
    wait_for(pop_lab.pop.pids, lambda pids: not pids, timeout_s=5, what="PoP ns empty")
    api_log = (pop_lab.workdir / "stub.api-in").read_text()
    assert '"notification": "shutdown"' in api_log
    assert api_log.endswith(("EOF\n", "SIGTERM\n"))


# -- helpers -------------------------------------------------------------------------------------

_HTTP_PROBE = """
import sys, urllib.request, urllib.error, socket
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=0.5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except (socket.timeout, TimeoutError):
    print("timeout")
except urllib.error.URLError as e:
    print("timeout" if isinstance(e.reason, (socket.timeout, TimeoutError)) else "refused")
"""

_TCP_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
    print("ok")
except ConnectionRefusedError:
    print("refused")
"""


def _http_status(lab: PopLab, url: str) -> str:
    return lab.pop.run([sys.executable, "-c", _HTTP_PROBE, url]).stdout.strip()


def _tcp_connect(lab: PopLab, host: str, port: int) -> str:
    return lab.pop.run([sys.executable, "-c", _TCP_PROBE, host, str(port)]).stdout.strip()


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_registry_kills_a_process_that_ignores_sigterm() -> None:
    registry = ProcessRegistry()
    proc = registry.spawn(
        [sys.executable, "-c", _IGNORES_SIGTERM], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    notes = registry.terminate_all(grace_s=0.2)
    assert proc.returncode == -signal.SIGKILL
    assert len(notes) == 1 and "SIGKILL" in notes[0]
    proc.stdout.close()


_IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""
