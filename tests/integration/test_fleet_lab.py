"""Fleet safety end to end (FLEET.md §3.11 tier 3): PoPs with ExaBGP and the agent each, one
BIRD upstream peering with all, one etcd member in its own namespace.

Three PoPs, K = 2: every edge of every PoP dies at once; the guard lets exactly one PoP
withdraw; the other two are refused and stay announced, de-preferred (max MED,
GRACEFUL_SHUTDOWN, AS path x4), and the upstream never holds fewer than 2 paths. Then etcd
stops: the agents go DEGRADED and the upstream receives no UPDATE at all.

Four PoPs in two regions (eu: pop1, pop2; us: pop3, pop4), K = 1, `ctl/` keys written straight
to etcd (FLEET.md §3.7-§3.8): a region drain is seen at the upstream as de-preferred, then
withdrawn (guarded), and every agent acknowledges it; etcd stops and comes back while eu is
drained, and the upstream sees no UPDATE; the undrain re-announces eu staged; a service ramp
25/50/100 % leaves exactly the `ramp_share` PoPs' paths normal, and raising it never touches a
PoP already active.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

import pytest

from anycast_agent.config import AgentConfig
from anycast_agent.core.fleet_intents import ramp_share
from tests.lab.bird import ImportCounters
from tests.lab.exabgp import ExabgpVersion
from tests.lab.fleetlab import (
    FLEET_PREFIX,
    FleetLab,
    View,
    VipPath,
    build_fleet,
    show_view,
)
from tests.lab.prereqs import require_lab, require_tool
from tests.lab.topology_description import QUICK_TIMERS
from tests.lab.wait import wait_for

K = 2
SETTLE_TIMEOUT_S = 30.0
WITHDRAW_TIMEOUT_S = 15.0
HOLD_WINDOW_S = 3.0
DEGRADED_TIMEOUT_S = 15.0
QUIET_WINDOW_S = 5.0
SAMPLE_INTERVAL_S = 0.05

# The four-PoP, two-region lab.
REGIONS = ("eu", "eu", "us", "us")
K_REGIONS = 1
DRAIN_GRACE_S = 2.0
DRAIN_KEY = "ctl/intent/region/eu"
RAMP_SALT = "fleet-lab-1"
RAMP_STEPS = (25, 50, 100)
STEP_TIMEOUT_S = 20.0  # a drain (grace + guard) or a staged re-announce (two stage holds + MED)
CONNECTED_TIMEOUT_S = 20.0
REJOIN_HOLD_S = 3.0
AUTHOR = "test_fleet_lab"


def normal(lab: FleetLab, v: View) -> bool:
    """Every PoP announces at its own MED, AS path of one, no GRACEFUL_SHUTDOWN."""
    return set(v) == {p.name for p in lab.fleet.pops} and lab.normal_pops(v) == set(v)


def depreferred(lab: FleetLab, path: VipPath) -> bool:
    return path == lab.depreferred_path()


def messages(counters: dict[str, ImportCounters]) -> dict[str, tuple[int, int]]:
    return {pop: (c.updates_received, c.withdraws_received) for pop, c in counters.items()}


class Recorder:
    """Samples the upstream's RIB; prints a line per change, relative to `t0`."""

    def __init__(self, lab: FleetLab, t0: float) -> None:
        self.lab = lab
        self.t0 = t0
        self.last: View | None = None
        self.lines: list[str] = []
        self.samples = 0

    def note(self, text: str) -> None:
        self.lines.append(f"t=+{time.monotonic() - self.t0:6.2f}s  {text}")

    def sample(self) -> View:
        v = self.lab.view()
        self.samples += 1
        if v != self.last:
            self.note(f"upstream: {show_view(v)}")
            self.last = v
        return v

    def watch(
        self,
        check: Callable[[View], None],
        until: Callable[[View], bool],
        *,
        timeout_s: float,
        what: str,
    ) -> float:
        """Sample until `until` holds, `check`ing every sample; the seconds it took."""
        start = time.monotonic()
        while True:
            v = self.sample()
            check(v)
            if until(v):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}: {show_view(v)}"
                )
            time.sleep(SAMPLE_INTERVAL_S)

    def hold(self, check: Callable[[View], None], duration_s: float) -> None:
        """`check` every sample for `duration_s`."""
        deadline = time.monotonic() + duration_s
        while True:
            check(self.sample())
            if time.monotonic() >= deadline:
                return
            time.sleep(SAMPLE_INTERVAL_S)


def start_fleet(lab: FleetLab, rec: Recorder) -> None:
    """Every PoP fully announced (ramp done), the fleet connected, every PoP published A."""
    pops = [p.name for p in lab.fleet.pops]
    lab.start_pops()
    rec.note("PoPs started")
    took = rec.watch(
        lambda v: None,
        lambda v: normal(lab, v),
        timeout_s=SETTLE_TIMEOUT_S,
        what=f"{len(pops)} paths",
    )
    rec.note(f"all {len(pops)} PoPs fully announced ({took:.1f}s)")
    wait_for(
        lab.fleet_modes,
        lambda modes: all(m == "connected" for m in modes.values()),
        timeout_s=15,
        what="every agent's fleet mode connected",
    )
    wait_for(
        lab.published,
        lambda states: all(s == "A" for s in states.values()),
        timeout_s=10,
        what="every PoP published A",
    )
    rec.note("fleet connected, every PoP published A")


@pytest.mark.parametrize(
    ("pops", "regions"), [(3, None), (4, REGIONS)], ids=["3-pops", "4-pops-2-regions"]
)
def test_fleet_description_is_documentation_ranges_and_valid_configs(
    pops: int, regions: tuple[str, ...] | None
) -> None:
    allowed = [
        ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    ]
    desc = build_fleet(pops=pops, min_pops=K, regions=regions, drain_grace_s=DRAIN_GRACE_S)
    addresses = [e.address for link in desc.links for e in (link.a, link.b)]
    addresses += [a for node in desc.nodes for a in desc.loopback_addresses(node)]
    addresses += [desc.etcd_address]
    for cidr in addresses:
        ip = ipaddress.ip_interface(cidr).ip
        assert any(ip in net for net in allowed), cidr
    interfaces = [
        ipaddress.ip_interface(a) for link in desc.links for a in (link.a.address, link.b.address)
    ]
    assert len({i.ip for i in interfaces}) == len(interfaces), "an address is used twice"
    assert 64512 <= desc.pop_as <= 65534 and 64512 <= desc.upstream_as <= 65534
    for pop, region in zip(desc.pops, regions or ("eu",) * pops, strict=True):
        data = desc.agent_config(pop.name, timers=QUICK_TIMERS, state_dir="/x/state")
        config = AgentConfig.model_validate(data)
        assert config.fleet is not None and config.fleet.min_pops == K
        assert config.fleet.endpoints == (desc.etcd_url,)
        assert config.fleet.region == region == desc.region_of(pop.name)
        assert config.defaults.drain_grace == DRAIN_GRACE_S
    if regions is not None:
        assert desc.region_pops("eu") == ["pop1", "pop2"]
        assert desc.region_pops("us") == ["pop3", "pop4"]


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_guard_keeps_k_pops_announced_and_etcd_loss_sends_nothing(
    exabgp_version: ExabgpVersion,
) -> None:
    require_lab(exabgp_version)
    require_tool("etcd", "etcd-server")
    started = time.monotonic()
    with FleetLab(exabgp_version=exabgp_version, description=build_fleet(3, K)) as lab:
        rec = Recorder(lab, started)
        try:
            run_scenario(lab, rec)
        except AssertionError as exc:
            exc.add_note(lab.report())
            raise
        finally:
            rec.note(f"done ({rec.samples} RIB samples)")
            print("\n" + "\n".join(rec.lines))
    print(f"fleet lab: {time.monotonic() - started:.1f}s in all")


def run_scenario(lab: FleetLab, rec: Recorder) -> None:
    pops = [p.name for p in lab.fleet.pops]

    # 1. Everything up: all three PoPs fully announced (ramp done), the fleet connected,
    #    every PoP published as announcing.
    start_fleet(lab, rec)
    svc_keys = {pop: f"{FLEET_PREFIX}svc/{lab.fleet.service}/pop/{pop}" for pop in pops}

    # 2. Every edge of every PoP dies at once. The guard permits one withdraw; K = 2 others
    #    stay announced, de-preferred, at every sample, and it stays so.
    before_kill = lab.import_counters()
    kill_at = lab.kill_all_edges()
    rec.note("killed every edge of every PoP")

    def at_least_k(v: View) -> None:
        assert len(v) >= K, (
            f"{time.monotonic() - kill_at:.2f}s after the kill the upstream holds "
            f"{len(v)} path(s) (< K = {K}): {show_view(v)}"
        )

    def settled(v: View) -> bool:
        return len(v) == K and all(depreferred(lab, p) for p in v.values())

    took = rec.watch(at_least_k, settled, timeout_s=WITHDRAW_TIMEOUT_S, what="one withdrawn")
    kept = dict(rec.last or {})
    [gone] = set(pops) - set(kept)
    rec.note(f"{gone} withdrawn, {sorted(kept)} de-preferred ({took:.2f}s after the kill)")

    def unchanged(v: View) -> None:
        assert v == kept, (
            f"{time.monotonic() - kill_at:.2f}s after the kill the upstream changed: "
            f"{show_view(v)} (was {show_view(kept)})"
        )

    rec.hold(unchanged, HOLD_WINDOW_S)
    after_kill = lab.import_counters()
    withdraws = {
        p: after_kill[p].withdraws_received - before_kill[p].withdraws_received for p in pops
    }
    assert withdraws == {p: int(p == gone) for p in pops}, (
        f"withdraws received since the kill: {withdraws}; "
        f"counters before {messages(before_kill)}, after {messages(after_kill)}"
    )
    keys = lab.fleet_keys()
    published = {pop: keys.get(k) for pop, k in svc_keys.items()}
    assert published == {p: "W" if p == gone else "D" for p in pops}, published
    rec.note(f"etcd: {published}")

    # 3. etcd stops: every agent goes DEGRADED, and the upstream receives nothing, from the
    #    stop through a quiet window after the last agent noticed.
    before_stop = lab.import_counters()
    assert lab.session_states() == dict.fromkeys(pops, "Established")
    stop_at = time.monotonic()
    lab.etcd.stop()
    rec.note("etcd stopped (SIGTERM)")

    def nothing_received(v: View) -> None:
        unchanged(v)
        now = lab.import_counters()
        assert messages(now) == messages(before_stop), (
            f"{time.monotonic() - stop_at:.2f}s after etcd stopped the upstream received "
            f"UPDATEs: before {messages(before_stop)}, now {messages(now)} "
            "(updates, withdraws received per PoP)"
        )

    modes: dict[str, str | None] = {}

    def all_degraded(v: View) -> bool:
        modes.update(lab.fleet_modes())
        return all(m == "degraded" for m in modes.values())

    took = rec.watch(
        nothing_received, all_degraded, timeout_s=DEGRADED_TIMEOUT_S, what="every agent DEGRADED"
    )
    rec.note(f"every agent DEGRADED {took:.2f}s after etcd stopped")
    rec.hold(nothing_received, QUIET_WINDOW_S)
    assert lab.session_states() == dict.fromkeys(pops, "Established")
    assert all(m == "degraded" for m in lab.fleet_modes().values()), lab.fleet_modes()
    rec.note(f"no UPDATE for {time.monotonic() - stop_at:.1f}s after etcd stopped")


# -- four PoPs, two regions: region drain, etcd outage, undrain, ramp --------------------------


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_region_drain_ramp_and_etcd_rejoin_seen_at_the_upstream(
    exabgp_version: ExabgpVersion,
) -> None:
    require_lab(exabgp_version)
    require_tool("etcd", "etcd-server")
    started = time.monotonic()
    desc = build_fleet(4, K_REGIONS, regions=REGIONS, drain_grace_s=DRAIN_GRACE_S)
    with FleetLab(exabgp_version=exabgp_version, description=desc) as lab:
        rec = Recorder(lab, started)
        try:
            start_fleet(lab, rec)
            drain_rev = region_drain(lab, rec)
            etcd_outage_without_flap(lab, rec, drain_rev)
            region_undrain(lab, rec)
            service_ramp(lab, rec)
        except AssertionError as exc:
            exc.add_note(lab.report())
            raise
        finally:
            rec.note(f"done ({rec.samples} RIB samples)")
            print("\n" + "\n".join(rec.lines))
    print(f"fleet lab (4 PoPs, 2 regions): {time.monotonic() - started:.1f}s in all")


def region_drain(lab: FleetLab, rec: Recorder) -> int:
    """`ctl/intent/region/eu`: pop1 and pop2 de-preferred, then withdrawn after the grace (K = 1
    is met by the us PoPs, which the upstream sees untouched); every PoP acknowledges. The
    write's revision."""
    eu, us = lab.fleet.region_pops("eu"), lab.fleet.region_pops("us")
    before = lab.import_counters()
    rev = lab.ctl_put(
        DRAIN_KEY,
        {
            "action": "drain",
            "reason": "lab: eu maintenance",
            "author": AUTHOR,
            "created": time.time(),
        },
    )
    rec.note(f"put {DRAIN_KEY} (revision {rev})")
    depreferred_at: dict[str, float] = {}
    withdrawn_at: dict[str, float] = {}

    def check(v: View) -> None:
        now = time.monotonic()
        for pop in us:
            assert v.get(pop) == lab.normal_path(pop), f"us PoP {pop} moved: {show_view(v)}"
        for pop in eu:
            path = v.get(pop)
            if path is None:
                assert pop in depreferred_at, (
                    f"{pop} withdrawn before it was de-preferred: {show_view(v)}"
                )
                withdrawn_at.setdefault(pop, now)
            elif depreferred(lab, path):
                assert pop not in withdrawn_at, (
                    f"{pop} came back after its withdraw: {show_view(v)}"
                )
                depreferred_at.setdefault(pop, now)
            else:
                assert path == lab.normal_path(pop) and pop not in depreferred_at, (
                    f"{pop}: neither normal, de-preferred nor withdrawn: {show_view(v)}"
                )

    took = rec.watch(
        check, lambda v: set(v) == set(us), timeout_s=STEP_TIMEOUT_S, what="eu withdrawn"
    )
    held = {pop: withdrawn_at[pop] - depreferred_at[pop] for pop in eu}
    rec.note(
        f"eu withdrawn {took:.2f}s after the put; de-preferred for "
        + ", ".join(f"{pop} {s:.2f}s" for pop, s in held.items())
    )
    for pop, seconds in held.items():
        # First sample at D to first sample without a path: a sample late at most at each end.
        assert seconds >= DRAIN_GRACE_S - 0.5, f"{pop} de-preferred only {seconds:.2f}s"
    wait_for(
        lab.published,
        lambda states: states == {p: "W" if p in eu else "A" for p in states},
        timeout_s=5,
        what="eu published W, us A",
    )
    took = lab.wait_acked(rev)
    rec.note(f"every PoP acknowledged revision {rev}: {lab.acked_revisions()}")
    after = lab.import_counters()
    assert messages({p: after[p] for p in us}) == messages({p: before[p] for p in us}), (
        f"the us PoPs sent UPDATEs: before {messages(before)}, after {messages(after)}"
    )
    return rev


def etcd_outage_without_flap(lab: FleetLab, rec: Recorder, drain_rev: int) -> None:
    """eu drained and withdrawn, us announced; etcd stops (every agent DEGRADED) and starts
    again on the same data dir (every agent CONNECTED): the upstream's RIB, its sessions and
    their import counters never change."""
    pops = [p.name for p in lab.fleet.pops]
    us = lab.fleet.region_pops("us")
    stable = rec.sample()
    assert set(stable) == set(us), show_view(stable)
    before = lab.sessions()
    assert all(state == "Established" for state, _ in before.values()), before

    def unchanged(v: View) -> None:
        assert v == stable, (
            f"the upstream's paths changed: {show_view(v)} (was {show_view(stable)})"
        )
        now = lab.sessions()
        assert now == before, (
            "the upstream's sessions or import counters changed: "
            f"before {_sessions(before)}, now {_sessions(now)}"
        )

    def all_modes(mode: str) -> Callable[[View], bool]:
        return lambda v: all(m == mode for m in lab.fleet_modes().values())

    stop_at = time.monotonic()
    lab.etcd.stop()
    rec.note("etcd stopped (SIGTERM)")
    took = rec.watch(
        unchanged, all_modes("degraded"), timeout_s=DEGRADED_TIMEOUT_S, what="every agent DEGRADED"
    )
    rec.note(f"every agent DEGRADED {took:.2f}s after etcd stopped")
    rec.hold(unchanged, 1.0)
    lab.etcd.start()
    restart_at = time.monotonic()
    rec.note("etcd started again (same data dir)")
    took = rec.watch(
        unchanged,
        all_modes("connected"),
        timeout_s=CONNECTED_TIMEOUT_S,
        what="every agent CONNECTED again",
    )
    rec.note(f"every agent CONNECTED {took:.2f}s after etcd started")
    rec.hold(unchanged, REJOIN_HOLD_S)
    eu = lab.fleet.region_pops("eu")
    wait_for(
        lab.published,
        lambda states: states == {p: "W" if p in eu else "A" for p in pops},
        timeout_s=5,
        what="the same states re-published",
    )
    revs = lab.acked_revisions()
    assert all(r is not None and r >= drain_rev for r in revs.values()), revs
    rec.hold(unchanged, 0.5)
    rec.note(
        f"no UPDATE and no path change for {time.monotonic() - stop_at:.1f}s "
        f"(etcd down {restart_at - stop_at:.1f}s); states re-published"
    )


def _sessions(sessions: dict[str, tuple[str, ImportCounters]]) -> dict[str, object]:
    return {
        pop: (state, c.updates_received, c.withdraws_received)
        for pop, (state, c) in sessions.items()
    }


def region_undrain(lab: FleetLab, rec: Recorder) -> None:
    """Deleting the intent: eu re-announced through the staged re-announce (AS-path prepends
    first), us untouched; every PoP acknowledges."""
    eu, us = lab.fleet.region_pops("eu"), lab.fleet.region_pops("us")
    rev = lab.ctl_delete(DRAIN_KEY)
    rec.note(f"deleted {DRAIN_KEY} (revision {rev})")
    seen: dict[str, list[str]] = {pop: [] for pop in eu}

    def check(v: View) -> None:
        for pop in us:
            assert v.get(pop) == lab.normal_path(pop), f"us PoP {pop} moved: {show_view(v)}"
        for pop in eu:
            letter = lab.path_letter(pop, v.get(pop))
            if not seen[pop] or seen[pop][-1] != letter:
                seen[pop].append(letter)
            assert seen[pop][:-1].count("A") == 0, f"{pop} left full announce: {seen[pop]}"

    took = rec.watch(
        check, lambda v: normal(lab, v), timeout_s=STEP_TIMEOUT_S, what="eu fully announced"
    )
    rec.note(f"eu fully announced {took:.2f}s after the delete: {seen}")
    for pop, letters in seen.items():
        assert any(letter.startswith("R") for letter in letters), (
            f"{pop} re-announced without a staged (prepended) step: {letters}"
        )
    lab.wait_acked(rev)
    wait_for(
        lab.published,
        lambda states: all(s == "A" for s in states.values()),
        timeout_s=5,
        what="every PoP published A",
    )
    rec.note(f"every PoP acknowledged revision {rev} and published A")


def service_ramp(lab: FleetLab, rec: Recorder) -> None:
    """`ctl/ramp/service/web` over all four PoPs at 25, 50, 100 %: exactly the ramp share's
    PoPs are normal at the upstream (K = 1 lets every other PoP withdraw, each de-preferred
    first), and a PoP once active keeps its path untouched as the percent rises."""
    members = [p.name for p in lab.fleet.pops]
    active: set[str] = set(members)  # no ramp key: 100 %
    for step, percent in enumerate(RAMP_STEPS):
        expected = set(ramp_share(members, RAMP_SALT, percent))
        assert len(expected) == math.ceil(percent * len(members) / 100)
        if step > 0:
            assert expected >= active, f"ramp_share lost {active - expected} at {percent}%"
        ramp_step(lab, rec, members, percent, active, expected)
        active = expected
    rec.note("ramp 25/50/100 % done; every PoP acknowledged each step")


def ramp_step(
    lab: FleetLab,
    rec: Recorder,
    members: list[str],
    percent: int,
    active: set[str],
    expected: set[str],
) -> None:
    """Put the ramp at `percent`; until exactly `expected` is normal and the rest withdrawn,
    every PoP in `active` and `expected` keeps its normal path at every sample."""
    key = f"ctl/ramp/service/{lab.fleet.service}"
    kept, leaving = expected & active, active - expected
    rev = lab.ctl_put(
        key,
        {
            "percent": percent,
            "salt": RAMP_SALT,
            "members": members,
            "author": AUTHOR,
            "reason": "lab ramp",
            "set_at": time.time(),
        },
    )
    rec.note(f"put {key} {percent}% (revision {rev}): active share {sorted(expected)}")
    depreferred_seen: set[str] = set()

    def check(v: View) -> None:
        for pop in kept:
            assert v.get(pop) == lab.normal_path(pop), (
                f"{pop}, active before, lost its normal path at {percent}%: {show_view(v)}"
            )
        for pop in leaving:
            path = v.get(pop)
            if path is None:
                assert pop in depreferred_seen, (
                    f"{pop} withdrawn before de-preferred: {show_view(v)}"
                )
            elif depreferred(lab, path):
                depreferred_seen.add(pop)
            else:
                assert path == lab.normal_path(pop) and pop not in depreferred_seen, (
                    f"{pop} leaving the share: unexpected path {show_view(v)}"
                )

    def done(v: View) -> bool:
        return set(v) == expected and lab.normal_pops(v) == expected

    took = rec.watch(check, done, timeout_s=STEP_TIMEOUT_S, what=f"the {percent}% share")
    rec.note(
        f"{percent}%: exactly {sorted(expected)} normal at the upstream, the rest withdrawn "
        f"({took:.2f}s)"
    )
    lab.wait_acked(rev)
    wait_for(
        lab.published,
        lambda states: states == {p: "A" if p in expected else "W" for p in states},
        timeout_s=5,
        what=f"published states at {percent}%",
    )
