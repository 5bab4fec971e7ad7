"""The two-PoP topology (containerlab/ and the netns lab share one description), proven in
network namespaces: the client fails over from PoP 1 to PoP 2 and back after PoP 1's ramp.

CI has no Docker, so this is the path that proves the containerlab topology: its files are
generated from the same `TwoPopDescription` the namespaces are built from, and
`test_containerlab_files_match_the_description` fails when they drift.
"""

from __future__ import annotations

import io
import ipaddress

from tests.lab.demo import Timeline, run_scenario, summary
from tests.lab.exabgp import ExabgpVersion
from tests.lab.prereqs import require_lab
from tests.lab.topology_description import QUICK_TIMERS, build_two_pop, check_containerlab
from tests.lab.twopop import TwoPopLab


def test_containerlab_files_match_the_description() -> None:
    problems = check_containerlab()
    assert not problems, (
        "containerlab/ drifted from tests/lab/topology_description.py; regenerate with "
        "`python -m tests.lab.topology_description --write`:\n" + "\n".join(problems)
    )


def test_description_is_documentation_ranges_only() -> None:
    allowed = [
        ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    ]
    desc = build_two_pop()
    addresses = [e.address for link in desc.links for e in (link.a, link.b)]
    addresses += [a for node in desc.nodes for a in desc.loopback_addresses(node)]
    for cidr in addresses:
        ip = ipaddress.ip_interface(cidr).ip
        assert any(ip in net for net in allowed), cidr
    assert 64512 <= desc.pop_as <= 65534 and 64512 <= desc.upstream_as <= 65534


# Both ExaBGP versions: a run is ~15 s, and ExaBGP is what carries the withdraw.
def test_failover_pop1_to_pop2_and_back(exabgp_version: ExabgpVersion) -> None:
    require_lab(exabgp_version)
    out = io.StringIO()
    with TwoPopLab(exabgp_version=exabgp_version, timers=QUICK_TIMERS) as lab:
        timeline = Timeline(lab, out)
        try:
            result = run_scenario(lab, timeline, client_budget_s=40)
        finally:
            print("\n" + out.getvalue())
        samples = lab.clients[0].samples()
    print("\n".join(f"[exabgp {exabgp_version}] {line}" for line in summary(result, QUICK_TIMERS)))
    timers = QUICK_TIMERS
    # Every request after the switch was answered by PoP 2, until PoP 1 was best again.
    failover_at = result.failover.first_new
    back_at = result.recovery.first_new
    between = [s for s in samples if failover_at <= s.t < back_at]
    assert between and all(s.answer == "pop2" for s in between), between[:5]
    assert all(s.answer == "pop1" for s in samples if s.t >= back_at)
    # Withdraw within fall probes (+ one timeout and slack); the client moves with the route.
    assert result.withdraw_s < timers.fall * timers.interval_s + timers.timeout_s + 1.0
    assert result.failover.gap_s < 1.0 and result.recovery.gap_s < 1.0
    if result.ramp:
        # The ramp (prepends) kept PoP 2 best while PoP 1 came back.
        assert result.saw_ramp_stage
        assert result.reannounce_s >= 2 * timers.stage_hold_s
