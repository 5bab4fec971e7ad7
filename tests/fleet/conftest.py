"""Fixtures for fleet tests against real etcd members (tests/lab/etcd.py).

`etcd_cluster` is one 3-member cluster for the whole session: tests on it must leave every
member running. A test that kills or pauses members takes its own from `etcd_cluster_factory`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.etcd import ETCD, OPENSSL, EtcdCluster
from tests.lab.prereqs import require_tool


def _require_etcd(*, tls: bool = False) -> None:
    # Plain processes on loopback ports: no root needed, only the binaries.
    require_tool(ETCD, "etcd-server")
    if tls:
        require_tool(OPENSSL, "openssl")


def _started(
    workdir: Path, members: int, *, tls: bool = False, auth: bool = False, token_ttl_s: int = 300
) -> EtcdCluster:
    _require_etcd(tls=tls)
    cluster = EtcdCluster(workdir, members, tls=tls, auth=auth, auth_token_ttl_s=token_ttl_s)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three members, plain http, no auth; shared by the session."""
    cluster = _started(tmp_path_factory.mktemp("etcd"), 3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcd_tls_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member serving https, with auth on: users `root` and `pop1` (see `credentials`)."""
    cluster = _started(tmp_path_factory.mktemp("etcd-tls"), 1, tls=True, auth=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """Fresh clusters for one destructive test; each is stopped after the test."""
    clusters: list[EtcdCluster] = []

    def make(
        members: int = 3, *, tls: bool = False, auth: bool = False, token_ttl_s: int = 300
    ) -> EtcdCluster:
        workdir = tmp_path / f"etcd{len(clusters)}"
        cluster = _started(workdir, members, tls=tls, auth=auth, token_ttl_s=token_ttl_s)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
