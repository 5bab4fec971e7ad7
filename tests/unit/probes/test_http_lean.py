"""The lean HTTP client: keep-alive reuse stays honest, and the response parser's edge cases."""

from __future__ import annotations

import pytest

from anycast_agent.config import HttpCheck
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.http import KEEPALIVE_MAX_REUSES, HttpProbe
from anycast_agent.probes.http_lean import BadResponse, ResponseParser, dechunk
from tests.unit.probes.conftest import HttpServer


async def test_keepalive_reuses_one_connection(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True), 0.5)
    assert isinstance(probe, HttpProbe)
    for _ in range(3):
        assert (await probe.check()).ok
    probe.close()
    assert len(set(http_server_v4.seen.peer_ports)) == 1


async def test_keepalive_opens_a_fresh_connection_every_max_reuses(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True), 0.5)
    assert isinstance(probe, HttpProbe)
    for _ in range(KEEPALIVE_MAX_REUSES + 1):
        assert (await probe.check()).ok
    probe.close()
    assert len(set(http_server_v4.seen.peer_ports)) == 2


async def test_keepalive_body_checks_still_apply(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    check = HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True, body_regex="unhealthy")
    probe = factory.build(check, 0.5)
    assert isinstance(probe, HttpProbe)
    assert (await probe.check()).reason == "body does not match /unhealthy/"
    probe.close()


def test_chunked_body_is_decoded() -> None:
    assert dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") == (b"abcde", True)
    assert dechunk(b"3\r\nabc\r\n2\r\nd") == (b"abcd", False)
    with pytest.raises(BadResponse, match="invalid chunk size"):
        dechunk(b"zz\r\n")


@pytest.mark.parametrize(
    ("raw", "status", "body", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", True),
        (b"HTTP/1.1 503 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 503, b"", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200,
         b"ok", True),
    ],
)  # fmt: skip
def test_parser_reads_to_the_end_of_the_response(
    raw: bytes, status: int, body: bytes, reusable: bool
) -> None:
    parser = ResponseParser(need_body=True, need_headers=False, head_only=False, limit=1024)
    response = parser.feed(raw)
    assert response is not None
    assert (response.status, response.body, parser.reusable) == (status, body, reusable)


def test_parser_rejects_what_is_not_http() -> None:
    parser = ResponseParser(need_body=False, need_headers=False, head_only=False, limit=1024)
    with pytest.raises(BadResponse, match="invalid status line"):
        parser.feed(b"SSH-2.0-OpenSSH\r\n\r\n")
