"""The etcd client and Mirror against real etcd 3.4 members (FLEET.md §3.1, measured faults).

Tests on `etcd_cluster` leave every member running; those that kill members take a fresh
cluster. Each test writes under its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from anycast_agent.fleet import etcd_wire as wire
from anycast_agent.fleet.etcd_http import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRejected,
    EtcdUnavailable,
    EventKind,
    KeyValue,
    Mirror,
    PutOp,
    RangeResult,
    TxnResult,
    WatchEvent,
)
from tests.lab.etcd import AGENT_PREFIX, EtcdCluster

ClusterFactory = Callable[..., EtcdCluster]
POLL_S = 0.02


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until it holds; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def running(mirror: Mirror) -> AsyncIterator[Mirror]:
    task = asyncio.create_task(mirror.run(), name="mirror")
    try:
        yield mirror
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def prefix() -> str:
    """A prefix of this test's own, inside the keyspace the lab's `pop1` user may use."""
    return f"{AGENT_PREFIX}test-{secrets.token_hex(4)}/"


def member_index(cluster: EtcdCluster, url: str) -> int:
    return cluster.endpoints.index(url)


# --- the gateway's answers, as etcd 3.4.23 gave them --------------------------------------

HEADER = '"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}'


@pytest.mark.parametrize(
    ("status", "body", "judged"),
    [
        (
            400,
            '{"error":"etcdserver: too many operations in txn request",'
            '"message":"etcdserver: too many operations in txn request","code":3}',
            wire.Refused,
        ),
        (
            403,
            '{"error":"etcdserver: permission denied",'
            '"message":"etcdserver: permission denied","code":7}',
            wire.Refused,
        ),
        (
            400,
            '{"error":"etcdserver: authentication failed, invalid user ID or password",'
            '"message":"etcdserver: authentication failed, invalid user ID or password","code":3}',
            wire.Refused,
        ),
        (
            401,
            '{"error":"etcdserver: invalid auth token",'
            '"message":"etcdserver: invalid auth token","code":16}',
            wire.AuthExpired,
        ),
        (
            400,
            '{"error":"etcdserver: user name is empty",'
            '"message":"etcdserver: user name is empty","code":3}',
            wire.AuthExpired,
        ),
        (
            503,
            '{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}',
            wire.NotApplied,
        ),
        (
            200,
            '{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
            '"http_status":"Service Unavailable"}}',
            wire.NotApplied,
        ),
        (503, '{"error":"etcdserver: request timed out","code":14}', wire.NoAnswer),
        (404, "Not Found\n", wire.Refused),
        (200, "{truncated", wire.NoAnswer),
    ],
)
def test_gateway_errors_are_judged_by_what_a_retry_elsewhere_could_do(
    status: int, body: str, judged: type[Exception]
) -> None:
    with pytest.raises(judged):
        wire.judge(status, body)


def test_gateway_answers_omit_defaults_and_are_read_as_zero_or_empty() -> None:
    assert wire.range_result(wire.judge(200, "{" + HEADER + "}")) == RangeResult(7, ())
    assert wire.txn_result(wire.judge(200, "{" + HEADER + "}")) == TxnResult(False, 7)
    gone = '{"result":{' + HEADER + ',"ID":"42"}}\n'
    assert wire.keepalive_ttl(wire.judge(200, gone)) == 0
    result = wire.judge(
        200,
        '{"result":{' + HEADER + ',"events":['
        '{"kv":{"key":"L2Ev","create_revision":"6","mod_revision":"6","version":"1"}},'
        '{"type":"DELETE","kv":{"key":"L2Ev","mod_revision":"7"}}]}}',
    )
    assert wire.watch_events(wire.field(result, "result")) == [
        WatchEvent(EventKind.PUT, KeyValue("/a/", b"", 6, 6, 1, 0)),
        WatchEvent(EventKind.DELETE, KeyValue("/a/", b"", 0, 7, 0, 0)),
    ]
    with pytest.raises(wire.BadAnswer):
        wire.range_result({"header": {"revision": "seven"}})
    with pytest.raises(wire.BadAnswer):
        wire.watch_events({"events": [{"type": "PATCH", "kv": {}}]})


def test_prefix_ends_select_exactly_the_prefix() -> None:
    assert wire.prefix_end("/anycast/v1/") == wire.b64("/anycast/v10")
    assert wire.prefix_end("") == wire.b64(b"\x00")  # every key


# --- key-value -------------------------------------------------------------------------------


async def test_put_then_range_by_key_prefix_and_serializable(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        first = await client.put(prefix + "a", b"1")
        second = await client.put(prefix + "b", b"\x00\xff")
        await client.put(prefix[:-1] + "0", b"outside")  # the next key after the prefix

        one = await client.range(prefix + "a")
        every = await client.range(prefix, prefix=True)
        stale = await client.range(prefix, prefix=True, serializable=True)
        missing = await client.range(prefix + "nothing")

    assert second > first
    assert [(kv.key, kv.value) for kv in one.kvs] == [(prefix + "a", b"1")]
    assert one.kvs[0].create_revision == one.kvs[0].mod_revision == first
    assert one.kvs[0].version == 1 and one.kvs[0].lease == 0
    assert [(kv.key, kv.value) for kv in every.kvs] == [
        (prefix + "a", b"1"),
        (prefix + "b", b"\x00\xff"),
    ]
    assert every.revision >= second
    assert [kv.key for kv in stale.kvs] == [prefix + "a", prefix + "b"]
    assert missing.kvs == () and missing.revision >= second


async def test_delete_one_key_or_a_prefix(etcd_cluster: EtcdCluster, prefix: str) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        for name in ("a", "b", "c"):
            await client.put(prefix + name, b"x")
        after_one = await client.delete(prefix + "a")
        left = await client.range(prefix, prefix=True)
        after_all = await client.delete(prefix, prefix=True)
        none = await client.range(prefix, prefix=True)

    assert [kv.key for kv in left.kvs] == [prefix + "b", prefix + "c"]
    assert left.revision == after_one
    assert after_all > after_one
    assert none.kvs == ()


async def test_txn_applies_success_or_failure_by_its_compares(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    own, slot = prefix + "own", prefix + "slot"
    async with EtcdClient(etcd_cluster.endpoints) as client:
        seen = await client.put(own, b"A")
        granted = await client.txn(
            [
                Compare(own, CompareTarget.MOD, CompareOp.EQUAL, seen),
                Compare(own, CompareTarget.VALUE, CompareOp.EQUAL, b"A"),
                Compare(slot, CompareTarget.CREATE, CompareOp.EQUAL, 0),
                Compare(own, CompareTarget.VERSION, CompareOp.GREATER, 0),
            ],
            [PutOp(own, b"W"), PutOp(slot, b"taken")],
        )
        # The same txn again: own key's mod_revision moved and the slot exists now.
        refused = await client.txn(
            [
                Compare(own, CompareTarget.MOD, CompareOp.EQUAL, seen),
                Compare(slot, CompareTarget.CREATE, CompareOp.EQUAL, 0),
            ],
            [PutOp(own, b"never")],
            [DeleteOp(slot)],
        )
        by_value = await client.txn(
            [Compare(own, CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"W")], [PutOp(own, b"x")]
        )
        state = await client.range(prefix, prefix=True)

    assert granted.succeeded and granted.revision > seen
    assert not refused.succeeded and refused.revision > granted.revision  # failure branch wrote
    assert not by_value.succeeded and by_value.revision == refused.revision
    assert {kv.key: kv.value for kv in state.kvs} == {own: b"W"}


async def test_txn_over_max_txn_ops_is_rejected_with_etcd_message(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    def absent(count: int) -> list[Compare]:
        return [
            Compare(f"{prefix}k{i}", CompareTarget.CREATE, CompareOp.EQUAL, 0) for i in range(count)
        ]

    async with EtcdClient(etcd_cluster.endpoints) as client:
        assert (await client.txn(absent(128), [])).succeeded
        with pytest.raises(EtcdRejected) as caught:
            await client.txn(absent(129), [])

    assert "too many operations in txn request" in str(caught.value)
    assert caught.value.reason == "etcdserver: too many operations in txn request"
    assert client.current in str(caught.value)


async def test_put_rejected_by_etcd_is_not_retried_elsewhere(etcd_cluster: EtcdCluster) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        with pytest.raises(EtcdRejected, match="key is not provided") as caught:
            await client.put("", b"x")
    assert etcd_cluster.endpoints[0] in str(caught.value)
    assert not any(url in str(caught.value) for url in etcd_cluster.endpoints[1:])


# --- leases ----------------------------------------------------------------------------------


async def test_lease_grant_keepalive_and_revoke_take_its_keys(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        short = await client.grant(1)
        lease = await client.grant(30)
        await client.put(prefix + "leased", b"x", lease=lease.id)
        held = await client.range(prefix + "leased")
        left_s = await client.keepalive(lease.id)
        await client.revoke(lease.id)
        after = await client.range(prefix, prefix=True)
        gone_s = await client.keepalive(lease.id)
        await client.revoke(lease.id)  # already gone: nothing to do
        await client.revoke(short.id)

    assert short.ttl_s >= 1  # etcd raises it to its minimum (2 s measured, FLEET.md)
    assert lease.ttl_s == 30 and lease.id > 0
    assert held.kvs[0].lease == lease.id
    assert 0 < left_s <= 30
    assert after.kvs == ()
    assert gone_s == 0


# --- failover --------------------------------------------------------------------------------


async def test_a_dead_first_endpoint_is_skipped_and_the_good_one_remembered(
    etcd_cluster: EtcdCluster, prefix: str, unused_tcp_port: int
) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    async with EtcdClient([dead, *etcd_cluster.endpoints], timeout_s=1.0) as client:
        assert client.current == dead
        await client.put(prefix + "k", b"v")
        assert client.current == etcd_cluster.endpoints[0]
        assert (await client.range(prefix + "k")).kvs[0].value == b"v"
        assert client.current == etcd_cluster.endpoints[0]

    async with EtcdClient([dead], timeout_s=1.0) as alone:
        with pytest.raises(EtcdUnavailable) as caught:
            await alone.put(prefix + "k", b"v")  # refused before sending: not "unknown"
    assert dead in str(caught.value) and "connect" in str(caught.value)


async def test_puts_recover_within_seconds_after_the_leader_is_killed(
    etcd_cluster_factory: ClusterFactory, prefix: str
) -> None:
    cluster = etcd_cluster_factory()
    leader = cluster.leader_index()
    endpoints = cluster.endpoints
    order = [endpoints[leader], *(u for i, u in enumerate(endpoints) if i != leader)]
    async with EtcdClient(order, timeout_s=1.0) as client:
        await client.put(prefix + "k", b"before")
        assert client.current == endpoints[leader]

        cluster.kill(leader)
        killed_at = time.monotonic()
        failures: list[EtcdError] = []
        while True:
            started = time.monotonic()
            try:
                await client.put(prefix + "k", b"after")
                break
            except (EtcdUnavailable, EtcdOutcomeUnknown) as exc:
                failures.append(exc)
            assert time.monotonic() - started <= 1.0 * len(endpoints) + 1.0
            assert time.monotonic() - killed_at < 8.0, failures
            await asyncio.sleep(POLL_S)
        recovered_s = time.monotonic() - killed_at

        assert recovered_s < 5.0, failures
        assert client.current != endpoints[leader]
        cluster.restart(leader)
        await asyncio.to_thread(cluster.wait_healthy, 10.0)
        assert (await client.range(prefix + "k")).kvs[0].value == b"after"


async def test_no_call_hangs_while_every_member_is_stopped(
    etcd_cluster_factory: ClusterFactory, prefix: str
) -> None:
    cluster = etcd_cluster_factory()
    async with EtcdClient(cluster.endpoints, timeout_s=0.5) as client:
        await client.put(prefix + "k", b"v")
        cluster.pause_all()
        try:
            for call in (
                lambda: client.put(prefix + "k", b"w"),
                lambda: client.range(prefix + "k"),
                lambda: client.range(prefix + "k", serializable=True),
            ):
                started = time.monotonic()
                with pytest.raises((EtcdUnavailable, EtcdOutcomeUnknown)):
                    await call()
                assert time.monotonic() - started <= 0.5 * 3 + 1.0
        finally:
            cluster.resume_all()
        await asyncio.to_thread(cluster.wait_healthy, 10.0)
        assert (await client.range(prefix + "k")).kvs[0].value in (b"v", b"w")


# --- watch and Mirror ------------------------------------------------------------------------


async def test_watch_confirms_then_streams_puts_and_deletes(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        start = await client.put(prefix + "old", b"0")
        stream = client.watch(prefix, start + 1)
        async with contextlib.aclosing(stream):
            assert await anext(stream) == []
            put = await client.put(prefix + "a", b"1")
            deleted = await client.delete(prefix + "a")
            batches = [await anext(stream), await anext(stream)]

    events = [event for batch in batches for event in batch]
    assert [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
        (EventKind.PUT, prefix + "a", b"1", put),
        (EventKind.DELETE, prefix + "a", b"", deleted),
    ]


async def test_watch_from_a_compacted_revision_is_rejected(
    etcd_cluster: EtcdCluster, prefix: str
) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        await client.put(prefix + "a", b"1")
        now = await client.put(prefix + "a", b"2")
        async with aiohttp.ClientSession() as raw:
            url = etcd_cluster.endpoints[0] + "/v3/kv/compaction"
            async with raw.post(url, json={"revision": str(now)}) as answer:
                assert answer.status == 200, await answer.text()
        stream = client.watch(prefix, now - 1)
        async with contextlib.aclosing(stream):
            assert await anext(stream) == []  # etcd confirms the watch, then cancels it
            with pytest.raises(EtcdRejected, match=f"compacted at {now}"):
                await anext(stream)


async def test_mirror_follows_puts_and_deletes(etcd_cluster: EtcdCluster, prefix: str) -> None:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        await client.put(prefix + "before", b"0")
        changes: list[int] = []
        mirror = Mirror(client, prefix, lambda m: changes.append(m.revision), clock=lambda: 42.0)
        assert not mirror.up and mirror.down_since == 42.0 and dict(mirror.view) == {}
        async with running(mirror):
            await wait_until(lambda: mirror.up, 5.0, "the mirror to come up")
            assert mirror.down_since is None
            assert {k: kv.value for k, kv in mirror.view.items()} == {prefix + "before": b"0"}
            put = await client.put(prefix + "a", b"1")
            await client.delete(prefix + "before")
            last = await client.put(prefix + "a", b"2")
            await wait_until(lambda: mirror.revision == last, 5.0, "the last put")

    assert {k: kv.value for k, kv in mirror.view.items()} == {prefix + "a": b"2"}
    assert mirror.view[prefix + "a"].create_revision == put
    assert changes[-1] == last and len(changes) >= 2


async def test_mirror_rebuilds_from_another_member_when_its_member_dies(
    etcd_cluster_factory: ClusterFactory, prefix: str
) -> None:
    cluster = etcd_cluster_factory()
    async with EtcdClient(cluster.endpoints, timeout_s=1.0) as client:
        ups: list[bool] = []
        mirror = Mirror(client, prefix, lambda m: ups.append(m.up))
        async with running(mirror):
            await wait_until(lambda: mirror.up, 5.0, "the mirror to come up")
            watched = member_index(cluster, client.current)
            await client.put(prefix + "a", b"1")
            await wait_until(lambda: prefix + "a" in mirror.view, 5.0, "the first put")

            ups.clear()
            cluster.kill(watched)
            took_s = await wait_until(lambda: False in ups and mirror.up, 10.0, "a rebuild")
            assert client.current != cluster.endpoints[watched]

            await client.delete(prefix + "a")
            last = await client.put(prefix + "b", b"2")
            await wait_until(lambda: mirror.revision >= last, 5.0, "events after the rebuild")
            assert set(mirror.view) == {prefix + "b"}
        cluster.restart(watched)
        await asyncio.to_thread(cluster.wait_healthy, 10.0)

    assert ups[0] is False and ups[-1] is True
    assert took_s < 5.0


async def test_mirror_goes_down_on_quorum_loss_and_comes_back(
    etcd_cluster_factory: ClusterFactory, prefix: str
) -> None:
    cluster = etcd_cluster_factory()
    timeout_s = 1.0
    async with EtcdClient(cluster.endpoints, timeout_s=timeout_s) as client:
        mirror = Mirror(client, prefix, lambda m: None)
        async with running(mirror):
            await wait_until(lambda: mirror.up, 5.0, "the mirror to come up")
            await client.put(prefix + "a", b"1")
            await wait_until(lambda: prefix + "a" in mirror.view, 5.0, "the put")
            survivor = member_index(cluster, client.current)
            others = [i for i in range(3) if i != survivor]

            for index in others:
                cluster.kill(index)
            killed_at = time.monotonic()
            # The survivor keeps the stream open; only hasleader makes it cancel the watch.
            await wait_until(lambda: not mirror.up, 8.0, "the mirror to go down")
            assert time.monotonic() - killed_at <= 6.0
            assert mirror.down_since is not None and mirror.down_since >= killed_at

            for _ in range(2):
                started = time.monotonic()
                with pytest.raises((EtcdUnavailable, EtcdOutcomeUnknown)):
                    await client.put(prefix + "b", b"2")
                assert time.monotonic() - started <= timeout_s * 3 + 1.0
            with pytest.raises(EtcdUnavailable, match="no leader"):
                await client.range(prefix + "a")
            stale = await client.range(prefix + "a", serializable=True)
            assert stale.kvs[0].value == b"1"
            assert not mirror.up and {k: kv.value for k, kv in mirror.view.items()} == {
                prefix + "a": b"1"
            }

            for index in others:
                cluster.restart(index)
            await wait_until(lambda: mirror.up, 10.0, "the mirror to come back")
            last = await client.put(prefix + "c", b"3")
            await wait_until(lambda: mirror.revision >= last, 5.0, "a put after the recovery")
            assert {prefix + "a", prefix + "c"} <= set(mirror.view)


# --- TLS and auth ----------------------------------------------------------------------------


async def test_tls_with_auth_puts_reads_and_watches(
    etcd_tls_auth: EtcdCluster, prefix: str
) -> None:
    password = etcd_tls_auth.credentials["pop1"]
    tls = etcd_tls_auth.tls_files()
    async with EtcdClient(
        etcd_tls_auth.endpoints, tls=tls, user="pop1", password=password
    ) as client:
        mirror = Mirror(client, prefix, lambda m: None)
        async with running(mirror):
            revision = await client.put(prefix + "a", b"1")
            assert (await client.range(prefix, prefix=True)).kvs[0].value == b"1"
            await wait_until(lambda: mirror.revision >= revision, 5.0, "the put in the mirror")
        with pytest.raises(EtcdRejected, match="permission denied"):
            await client.put("/elsewhere", b"x")

    async with EtcdClient(etcd_tls_auth.endpoints, tls=tls) as anonymous:
        with pytest.raises(EtcdRejected, match="user name is empty"):
            await anonymous.range(prefix)


async def test_wrong_password_is_rejected_naming_the_user(etcd_tls_auth: EtcdCluster) -> None:
    tls = etcd_tls_auth.tls_files()
    async with EtcdClient(
        etcd_tls_auth.endpoints, tls=tls, user="pop1", password="not-the-password"
    ) as client:
        with pytest.raises(EtcdRejected) as caught:
            await client.range(AGENT_PREFIX)

    message = str(caught.value)
    assert "'pop1'" in message and "authentication failed" in message
    assert "not-the-password" not in message


async def test_a_client_without_the_ca_cannot_connect(etcd_tls_auth: EtcdCluster) -> None:
    url = etcd_tls_auth.endpoints[0]
    async with EtcdClient([url], timeout_s=1.0) as client:
        with pytest.raises(EtcdUnavailable) as caught:
            await client.range(AGENT_PREFIX, serializable=True)

    assert url in str(caught.value) and "certificate" in str(caught.value)


async def test_an_expired_token_is_renewed_transparently(
    etcd_cluster_factory: ClusterFactory, prefix: str
) -> None:
    cluster = etcd_cluster_factory(1, tls=True, auth=True, token_ttl_s=1)
    password = cluster.credentials["pop1"]
    async with EtcdClient(
        cluster.endpoints, tls=cluster.tls_files(), user="pop1", password=password
    ) as client:
        await client.put(prefix + "k", b"1")

        def expired() -> list[object]:
            return [
                r["token"]
                for r in cluster.log_records("deleted a simple token")
                if r.get("user-name") == "pop1"
            ]

        await wait_until(lambda: bool(expired()), 5.0, "etcd to expire pop1's token")
        await client.put(prefix + "k", b"2")
        assert (await client.range(prefix + "k")).kvs[0].value == b"2"

    refused = {r.get("token") for r in cluster.log_records("invalid auth token")}
    assert refused & set(expired()), "the second put should have met the expired token"
