"""The fleet guard against a real 3-member etcd (FLEET.md §3.11 tier 1): simulated PoPs, each
the real core and coordinator, race, spend the budget and ride out etcd faults; an invariant
checker reads every PoP's RIB log."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from anycast_agent.core.fleet_intents import ramp_share
from anycast_agent.fleet.etcd_http import EtcdClient, EtcdOutcomeUnknown
from anycast_agent.model import FleetMode, RefusalReason
from tests.fleet.proxy import Proxy
from tests.fleet.sim import RibEntry, SimPop, check_invariants, sim_config, wait_until
from tests.lab.etcd import EtcdCluster
from tests.lab.prereqs import require_tool

_rounds = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster of this module's own: the fault tests kill and pause its members."""
    require_tool("etcd", "etcd-server")
    etcd = EtcdCluster(tmp_path_factory.mktemp("etcd-guard"), members=3)
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


class Fleet:
    def __init__(
        self,
        cluster: EtcdCluster,
        work: Path,
        count: int,
        endpoints: list[list[str]] | None = None,
        **fleet: Any,
    ) -> None:
        prefix = f"/anycast/t{next(_rounds)}-{time.monotonic_ns()}/"  # a fresh keyspace per test
        self.prefix = prefix
        self.log: list[RibEntry] = []
        self.pops = [
            SimPop(
                sim_config(
                    f"p{i:02d}",
                    endpoints[i] if endpoints else cluster.endpoints,
                    prefix,
                    work,
                    **fleet,
                ),
                self.log,
            )
            for i in range(count)
        ]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pops]

    def count(self, state: str) -> int:
        return sum(1 for p in self.pops if p.state == state)

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.pops))
        await wait_until(
            "every PoP connected and announcing",
            lambda: all(p.mode is FleetMode.CONNECTED and p.state == "A" for p in self.pops),
            15,
        )

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pops))

    def describe(self) -> str:
        """Each PoP's RIB state, mode and where its guard stands (for failure messages)."""
        return "; ".join(
            f"{p.name} {p.state} {p.mode} {p.pop.fleet.services.get('web')}" for p in self.pops
        )

    def changes_since(self, t: float) -> list[RibEntry]:
        return [x for x in self.log if x.t >= t]


@pytest.fixture
async def fleet_factory(cluster: EtcdCluster, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Fleet] = []

    async def make(count: int, **fleet: Any) -> Fleet:
        f = Fleet(cluster, tmp_path / f"fleet{len(made)}", count, **fleet)
        made.append(f)
        await f.start()
        return f

    yield make
    for f in made:
        await f.stop()


async def test_a_fleet_wide_failure_never_leaves_fewer_than_k_pops_announcing(
    fleet_factory: Any,
) -> None:
    """Every PoP's edges fail at the same moment, 20 times over: each time exactly N - K PoPs
    withdraw and K stay, de-preferred, at every step of the race."""
    pops, k = 20, 5
    for round_ in range(20):
        fleet = await fleet_factory(pops, min_pops=k, budget={"slots": 100, "window": 60})
        since = time.monotonic()
        await asyncio.gather(*(p.health(ok=False) for p in fleet.pops))
        await wait_until(
            f"round {round_}: {pops - k} withdrawn",
            lambda f=fleet: f.count("W") == pops - k and f.count("D") == k,
            20,
            fleet.describe,
        )
        start = dict.fromkeys(fleet.names, "A")
        check_invariants(fleet.changes_since(since), start, k, set(fleet.names))
        await fleet.stop()


async def test_the_budget_allows_at_most_b_health_withdraws_per_window(fleet_factory: Any) -> None:
    """K = 0, B = 2 slots of 2 s: six failing PoPs leave in a staircase, two per window."""
    fleet = await fleet_factory(6, min_pops=0, budget={"slots": 2, "window": 2})
    since = time.monotonic()
    await asyncio.gather(*(p.health(ok=False) for p in fleet.pops))
    await wait_until("every PoP withdrawn", lambda: fleet.count("W") == 6, 30)
    changes = fleet.changes_since(since)
    assert sum(1 for x in changes if x.what == "W") == 6
    start = dict.fromkeys(fleet.names, "A")
    check_invariants(changes, start, 0, set(fleet.names), budget=(2, 2.0))
    assert fleet.count("D") == 0


@pytest.mark.parametrize("fault", ["leader-kill", "quorum-loss", "sigstop-all"])
async def test_etcd_faults_change_no_route(
    cluster: EtcdCluster, fleet_factory: Any, fault: str
) -> None:
    """Seven PoPs, K = 6, two of them failing before the fault (one withdrawn, one refused
    and held de-preferred): the fault changes no route, and afterwards every PoP connects."""
    fleet = await fleet_factory(7, min_pops=6, budget={"slots": 10, "window": 60})
    await asyncio.gather(*(p.health(ok=False) for p in fleet.pops[:2]))
    await wait_until("one withdrawn, one held", lambda: fleet.count("W") == 1, 10)
    await wait_until("the other held de-preferred", lambda: fleet.count("D") == 1, 10)
    since = time.monotonic()
    degraded = fault != "leader-kill"
    killed: list[int] = []
    if fault == "leader-kill":
        killed = [await asyncio.to_thread(cluster.leader_index)]
    elif fault == "quorum-loss":
        leader = await asyncio.to_thread(cluster.leader_index)
        killed = [leader, (leader + 1) % 3]
    for i in killed:
        cluster.kill(i)
    if fault == "sigstop-all":
        cluster.pause_all()
    try:
        if degraded:
            await wait_until(
                "every PoP degraded",
                lambda: all(p.mode is FleetMode.DEGRADED for p in fleet.pops),
                15,
            )
        else:

            def elected() -> bool:
                try:
                    return cluster.leader_index() not in killed
                except AssertionError:  # no agreed leader yet: the election runs
                    return False

            await wait_until("a new leader", elected, 15)
    finally:
        if fault == "sigstop-all":
            cluster.resume_all()
        for i in killed:
            cluster.restart(i)
    await asyncio.to_thread(cluster.wait_healthy, 20)
    await wait_until(
        "every PoP connected again",
        lambda: all(p.mode is FleetMode.CONNECTED for p in fleet.pops),
        20,
    )
    assert fleet.changes_since(since) == []
    assert (fleet.count("A"), fleet.count("D"), fleet.count("W")) == (5, 1, 1)


def guard_of(pop: SimPop) -> RefusalReason | None:
    state = pop.pop.fleet.services.get("web")
    return None if state is None else state.refused


async def test_operator_keys_set_k_freeze_health_withdraws_and_override_for_one_pop(
    cluster: EtcdCluster, fleet_factory: Any
) -> None:
    fleet = await fleet_factory(3, min_pops=0, budget={"slots": 10, "window": 60})
    p0, p1 = fleet.pops[0], fleet.pops[1]
    async with EtcdClient(cluster.endpoints) as admin:
        await admin.put(fleet.prefix + "ctl/policy/web", b'{"min_pops": 3}')
        await p0.health(ok=False)
        await wait_until("p00 refused by ctl/policy", lambda: p0.state == "D", 10, fleet.describe)
        assert guard_of(p0) is RefusalReason.TOO_FEW
        lease = await admin.grant(60)
        await admin.put(fleet.prefix + "ctl/override/web/p00", b'{"reason": "t"}', lease=lease.id)
        await wait_until("p00 withdrawn by its override", lambda: p0.state == "W", 10)
        await admin.put(fleet.prefix + "ctl/policy/web", b'{"min_pops": 0}')
        await admin.put(fleet.prefix + "ctl/freeze", b'{"reason": "incident", "author": "op"}')
        await p1.health(ok=False)
        await wait_until(
            "p01 refused by the freeze, de-preferred",
            lambda: guard_of(p1) is RefusalReason.FROZEN and p1.state == "D",
            10,
            fleet.describe,
        )
        await admin.delete(fleet.prefix + "ctl/freeze")
        await wait_until("p01 withdrawn after the thaw", lambda: p1.state == "W", 10)
    assert fleet.pops[2].state == "A"


async def test_a_lost_session_lease_is_granted_again_and_republished_with_no_route_change(
    cluster: EtcdCluster, fleet_factory: Any
) -> None:
    fleet = await fleet_factory(2, min_pops=1)
    p0 = fleet.pops[0]
    own = fleet.prefix + "svc/web/pop/p00"
    since = time.monotonic()
    async with EtcdClient(cluster.endpoints) as admin:
        lease = p0.coordinator.lease
        assert lease is not None
        await admin.revoke(lease)  # as if it had expired: its keys vanish
        assert (await admin.range(own)).kvs == ()

        async def republished() -> bool:
            kvs = (await admin.range(own)).kvs
            return bool(kvs) and kvs[0].value == b"A" and kvs[0].lease != lease

        deadline = time.monotonic() + 10
        while not await republished():
            assert time.monotonic() < deadline, "never re-published"
            await asyncio.sleep(0.05)
    await wait_until("connected again", lambda: p0.mode is FleetMode.CONNECTED, 10)
    assert fleet.changes_since(since) == []


async def test_a_pop_coordinates_over_tls_with_a_password(
    etcd_tls_auth: EtcdCluster, tmp_path: Path
) -> None:
    password = tmp_path / "etcd-password"
    password.write_text(etcd_tls_auth.credentials["pop1"] + "\n")
    tls = etcd_tls_auth.tls_files()
    config = sim_config(
        "p00",
        etcd_tls_auth.endpoints,
        "/anycast/v1/tls/",
        tmp_path,
        min_pops=0,
        tls={
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        },
        auth={"user": "pop1", "password_file": str(password)},
    )
    log: list[RibEntry] = []
    pop = SimPop(config, log)
    await pop.start()
    try:
        await wait_until("connected over TLS", lambda: pop.mode is FleetMode.CONNECTED, 15)
        await pop.health(ok=False)
        await wait_until("withdrawn with the guard's permit", lambda: pop.state == "W", 10)
        assert [x.what for x in log] == ["A", "W"]
    finally:
        await pop.stop()


@pytest.mark.parametrize("landed", [True, False], ids=["committed", "lost"])
async def test_a_guard_answer_lost_in_flight_is_settled_by_reading_the_own_key(
    fleet_factory: Any, landed: bool
) -> None:
    """The transaction's answer never arrives (a deadline after sending): the PoP withdraws
    only if re-reading its own key shows the transaction landed (FLEET.md §3.1 rule 5)."""
    fleet = await fleet_factory(2, min_pops=1)
    p0 = fleet.pops[0]
    client = p0.coordinator.client
    real_txn = client.txn

    async def answer_lost(*args: Any, **kw: Any) -> Any:
        if landed:
            await real_txn(*args, **kw)
        raise EtcdOutcomeUnknown(f"{client.current}: deadline after sending the txn")

    client.txn = answer_lost
    await p0.health(ok=False)
    want = "W" if landed else "D"
    await wait_until(f"p00 {want}", lambda: p0.state == want, 10, fleet.describe)
    if not landed:
        assert guard_of(p0) is RefusalReason.UNANSWERED


async def test_a_region_drain_in_ctl_is_applied_acknowledged_and_guarded(
    cluster: EtcdCluster, fleet_factory: Any
) -> None:
    """`ctl/intent/region/default` drains every PoP of the region: each de-prefers, acks the
    ctl/ revision in pops/<pop>, and K = 1 keeps one announcing."""
    fleet = await fleet_factory(3, min_pops=1)
    async with EtcdClient(cluster.endpoints) as admin:
        key = fleet.prefix + "ctl/intent/region/default"
        revision = await admin.put(key, b'{"action": "drain", "reason": "DR", "author": "op"}')

        async def acked() -> bool:
            pops = await admin.range(fleet.prefix + "pops/", prefix=True)
            return len(pops.kvs) == 3 and all(
                json.loads(kv.value)["ctl_rev_applied"] >= revision for kv in pops.kvs
            )

        deadline = time.monotonic() + 10
        while not await acked():
            assert time.monotonic() < deadline, "not every PoP acknowledged the drain"
            await asyncio.sleep(0.05)
        await wait_until(
            "two withdrawn, one held", lambda: fleet.count("W") == 2, 15, fleet.describe
        )
        assert fleet.count("D") == 1
        await admin.delete(key)
        await wait_until("all back", lambda: fleet.count("A") == 3, 15, fleet.describe)


async def test_a_ramp_25_50_100_keeps_exactly_that_share_announcing(
    cluster: EtcdCluster, fleet_factory: Any
) -> None:
    """`ctl/ramp/service/web` over 8 PoPs: 2, 4, then 8 announce, exactly the ramp's share,
    and raising the percent never takes a PoP out."""
    fleet = await fleet_factory(8, min_pops=1)
    members = fleet.names
    active_before: frozenset[str] = frozenset()
    async with EtcdClient(cluster.endpoints) as admin:
        for percent in (25, 50, 100):
            value = {"percent": percent, "salt": "t", "members": members, "author": "op"}
            since = time.monotonic()
            await admin.put(fleet.prefix + "ctl/ramp/service/web", json.dumps(value).encode())
            share = ramp_share(members, "t", percent)

            def settled(share: frozenset[str] = share) -> bool:
                return {p.name for p in fleet.pops if p.state == "A"} == share and all(
                    p.state == "W" for p in fleet.pops if p.name not in share
                )

            await wait_until(f"{percent}%: exactly {sorted(share)}", settled, 15, fleet.describe)
            assert len(share) == len(members) * percent // 100
            assert active_before <= share
            left = {x.pop for x in fleet.changes_since(since) if x.what in "DW"}
            assert not left & active_before, f"raising to {percent}% took {left} out"
            active_before = share


async def test_a_partition_of_half_the_pops_withdraws_nothing(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Every PoP reaches etcd through a proxy of its own; half of them are cut off: they go
    DEGRADED, the rest stay CONNECTED, and no route moves, then or after the heal. A PoP on the
    cut side that fails meanwhile stays de-preferred."""
    proxies = [[Proxy(url) for url in cluster.endpoints] for _ in range(6)]
    for proxy in (p for row in proxies for p in row):
        await proxy.start()
    fleet = Fleet(cluster, tmp_path, 6, [[p.url for p in row] for row in proxies], min_pops=1)
    await fleet.start()
    try:
        since = time.monotonic()
        cut = fleet.pops[:3]
        for row in proxies[:3]:
            for proxy in row:
                proxy.partition()
        await wait_until(
            "the cut half degraded", lambda: all(p.mode is FleetMode.DEGRADED for p in cut), 15
        )
        assert all(p.mode is FleetMode.CONNECTED for p in fleet.pops[3:])
        assert fleet.changes_since(since) == []
        await cut[0].health(ok=False)  # dies while cut off: de-preferred, never withdrawn
        await wait_until("p00 de-preferred", lambda: cut[0].state == "D", 10, fleet.describe)
        for row in proxies[:3]:
            for proxy in row:
                proxy.heal()
        await wait_until(
            "every PoP connected",
            lambda: all(p.mode is FleetMode.CONNECTED for p in fleet.pops),
            20,
        )
        # Back in the fleet, p00's withdraw asks the guard and goes (K = 1 is met).
        await wait_until("p00 withdrawn through the guard", lambda: cut[0].state == "W", 10)
        assert [(x.pop, x.what) for x in fleet.changes_since(since)] == [("p00", "D"), ("p00", "W")]
    finally:
        await fleet.stop()
        for proxy in (p for row in proxies for p in row):
            await proxy.stop()
