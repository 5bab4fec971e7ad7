"""ProbeFactory: one probe kind per check kind, shared resources, closed on exit."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from anycast_agent.config import DnsCheck, ExecCheck, HttpCheck, TcpCheck
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.dns import DnsProbe
from anycast_agent.probes.exec import ExecProbe
from anycast_agent.probes.http import HttpProbe, LeanHttpProbe
from anycast_agent.probes.tcp import TcpProbe
from tests.unit.probes.conftest import HttpServer


@pytest.mark.parametrize(
    ("check", "kind"),
    [
        (HttpCheck(url="http://127.0.0.1:8080/health"), LeanHttpProbe),
        (HttpCheck(url="http://[2001:db8::1]:8080/health"), LeanHttpProbe),
        (HttpCheck(url="https://127.0.0.1/health"), HttpProbe),
        (HttpCheck(url="http://edge.example.test/health"), HttpProbe),
        (TcpCheck(host="127.0.0.1", port=8080), TcpProbe),
        (ExecCheck(argv=("/bin/true",)), ExecProbe),
        (DnsCheck(server=ip_address("127.0.0.1"), name="example.test"), DnsProbe),
    ],
)
async def test_build_dispatches_on_the_check_kind(
    factory: ProbeFactory, check: HttpCheck | TcpCheck | ExecCheck | DnsCheck, kind: type
) -> None:
    assert type(factory.build(check, 0.8)) is kind


async def test_tls_contexts_are_built_once_and_shared(factory: ProbeFactory) -> None:
    def ctx(probe: object) -> object:
        assert isinstance(probe, HttpProbe)
        return probe._ssl

    a = factory.build(HttpCheck(url="https://127.0.0.1/a"), 0.8)
    b = factory.build(HttpCheck(url="https://127.0.0.2/b", server_name="x.test"), 0.8)
    c = factory.build(HttpCheck(url="https://127.0.0.1/a", verify_tls=False), 0.8)
    d = factory.build(HttpCheck(url="https://127.0.0.1/a", verify_tls=False), 0.8)
    assert ctx(a) is ctx(b)
    assert ctx(c) is ctx(d)
    assert ctx(a) is not ctx(c)


async def test_http_needs_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        ProbeFactory().build(HttpCheck(url="http://127.0.0.1/"), 0.8)


async def test_bad_timeout_is_refused(factory: ProbeFactory) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        factory.build(TcpCheck(host="127.0.0.1", port=1), 0.0)


async def test_session_is_closed_on_exit(http_server_v4: HttpServer) -> None:
    async with ProbeFactory() as factory:
        probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok"), 0.8)
        assert (await probe.check()).ok
    with pytest.raises(RuntimeError, match="closed"):
        await probe.check()
