"""Fleet safety end to end (FLEET.md §3.11 tier 3): three PoPs, ExaBGP and the agent each, one
BIRD upstream, one etcd member, K = 2.

Every edge of every PoP dies at once: the guard lets exactly one PoP withdraw; the other two
are refused and stay announced, de-preferred (max MED, GRACEFUL_SHUTDOWN, AS path x4), and the
upstream never holds fewer than 2 paths. Then etcd stops: the agents go DEGRADED and the
upstream receives no UPDATE at all.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from anycast_agent.config import AgentConfig
from tests.lab.bird import ImportCounters
from tests.lab.exabgp import ExabgpVersion
from tests.lab.fleetlab import (
    DEPREFER_PREPENDS,
    DEPREFERRED_MED,
    FLEET_PREFIX,
    GRACEFUL_SHUTDOWN,
    FleetLab,
    build_fleet,
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


@dataclass(frozen=True)
class VipPath:
    """What the upstream holds from one PoP for the VIP."""

    med: int | None
    as_path: tuple[int, ...]
    gshut: bool

    def __str__(self) -> str:
        return f"med {self.med} aspath x{len(self.as_path)}{' gshut' if self.gshut else ''}"


View = dict[str, VipPath]


def view(lab: FleetLab) -> View:
    return {
        pop: VipPath(r.med, r.as_path, GRACEFUL_SHUTDOWN in r.communities)
        for pop, r in sorted(lab.vip_routes().items())
    }


def show(v: View) -> str:
    return ", ".join(f"{pop}: {path}" for pop, path in v.items()) or "no path"


def normal(lab: FleetLab, v: View) -> bool:
    """Every PoP announces at its own MED, AS path of one, no GRACEFUL_SHUTDOWN."""
    return set(v) == {p.name for p in lab.fleet.pops} and all(
        v[p.name] == VipPath(p.med, (lab.fleet.pop_as,), False) for p in lab.fleet.pops
    )


def depreferred(lab: FleetLab, path: VipPath) -> bool:
    return path == VipPath(DEPREFERRED_MED, (lab.fleet.pop_as,) * DEPREFER_PREPENDS, True)


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
        v = view(self.lab)
        self.samples += 1
        if v != self.last:
            self.note(f"upstream: {show(v)}")
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
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {show(v)}")
            time.sleep(SAMPLE_INTERVAL_S)

    def hold(self, check: Callable[[View], None], duration_s: float) -> None:
        """`check` every sample for `duration_s`."""
        deadline = time.monotonic() + duration_s
        while True:
            check(self.sample())
            if time.monotonic() >= deadline:
                return
            time.sleep(SAMPLE_INTERVAL_S)


def test_fleet_description_is_documentation_ranges_and_valid_configs() -> None:
    allowed = [
        ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    ]
    desc = build_fleet(pops=3, min_pops=K)
    addresses = [e.address for link in desc.links for e in (link.a, link.b)]
    addresses += [a for node in desc.nodes for a in desc.loopback_addresses(node)]
    addresses += [desc.etcd_address]
    for cidr in addresses:
        ip = ipaddress.ip_interface(cidr).ip
        assert any(ip in net for net in allowed), cidr
    assert 64512 <= desc.pop_as <= 65534 and 64512 <= desc.upstream_as <= 65534
    for pop in desc.pops:
        data = desc.agent_config(pop.name, timers=QUICK_TIMERS, state_dir="/x/state")
        config = AgentConfig.model_validate(data)
        assert config.fleet is not None and config.fleet.min_pops == K
        assert config.fleet.endpoints == (desc.etcd_url,)


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
    lab.start_pops()
    rec.note("PoPs started")
    took = rec.watch(
        lambda v: None, lambda v: normal(lab, v), timeout_s=SETTLE_TIMEOUT_S, what="3 paths"
    )
    rec.note(f"all {len(pops)} PoPs fully announced ({took:.1f}s)")
    wait_for(
        lab.fleet_modes,
        lambda modes: all(m == "connected" for m in modes.values()),
        timeout_s=15,
        what="every agent's fleet mode connected",
    )
    svc_keys = {pop: f"{FLEET_PREFIX}svc/{lab.fleet.service}/pop/{pop}" for pop in pops}
    wait_for(
        lab.fleet_keys,
        lambda keys: all(keys.get(k) == "A" for k in svc_keys.values()),
        timeout_s=10,
        what="every PoP published A",
    )
    rec.note("fleet connected, every PoP published A")

    # 2. Every edge of every PoP dies at once. The guard permits one withdraw; K = 2 others
    #    stay announced, de-preferred, at every sample, and it stays so.
    before_kill = lab.import_counters()
    kill_at = lab.kill_all_edges()
    rec.note("killed every edge of every PoP")

    def at_least_k(v: View) -> None:
        assert len(v) >= K, (
            f"{time.monotonic() - kill_at:.2f}s after the kill the upstream holds "
            f"{len(v)} path(s) (< K = {K}): {show(v)}"
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
            f"{show(v)} (was {show(kept)})"
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
