"""TCP probe against loopback listeners: accepting, refusing, and one whose queue is full."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from anycast_agent.config import TcpCheck
from anycast_agent.probes import ProbeFactory
from tests.unit.probes.conftest import LOOPBACKS


@pytest.fixture(params=LOOPBACKS)
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    family = socket.AF_INET6 if ":" in request.param else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((request.param, 0))
        s.listen(16)
        yield request.param, s.getsockname()[1]


async def test_connect_ok(factory: ProbeFactory, listener: tuple[str, int]) -> None:
    host, port = listener
    result = await factory.build(TcpCheck(host=host, port=port), 0.5).check()
    assert result.ok, result.reason
    assert 0 < result.latency_s < 0.5


async def test_connect_refused(factory: ProbeFactory, closed_port: int) -> None:
    result = await factory.build(TcpCheck(host="127.0.0.1", port=closed_port), 0.5).check()
    assert not result.ok
    assert result.reason == f"connect refused 127.0.0.1:{closed_port}"


async def test_connect_refused_names_ipv6_with_brackets(factory: ProbeFactory) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        result = await factory.build(TcpCheck(host="::1", port=port), 0.5).check()
    assert result.reason == f"connect refused [::1]:{port}"


async def test_full_accept_queue_times_out(factory: ProbeFactory, full_listener: int) -> None:
    started = time.monotonic()
    result = await factory.build(TcpCheck(host="127.0.0.1", port=full_listener), 0.3).check()
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.reason == "timeout after 0.3s"
    assert 0.3 <= result.latency_s <= elapsed < 0.5
