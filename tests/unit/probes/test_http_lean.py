"""The lean HTTP client: keep-alive reuse stays honest, and the response parser's edge cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycast_agent.config import HttpCheck
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.http import KEEPALIVE_MAX_REUSES, LeanHttpProbe
from anycast_agent.probes.http_parse import (
    CHUNK_LINE_LIMIT,
    BadResponse,
    ResponseParser,
    ServerClosed,
    dechunk,
)
from tests.unit.probes.conftest import HttpServer


async def test_keepalive_reuses_one_connection(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True), 0.5)
    assert isinstance(probe, LeanHttpProbe)
    for _ in range(3):
        assert (await probe.check()).ok
    probe.close()
    assert len(set(http_server_v4.seen.peer_ports)) == 1


async def test_keepalive_opens_a_fresh_connection_every_max_reuses(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True), 0.5)
    assert isinstance(probe, LeanHttpProbe)
    for _ in range(KEEPALIVE_MAX_REUSES + 1):
        assert (await probe.check()).ok
    probe.close()
    assert len(set(http_server_v4.seen.peer_ports)) == 2


async def test_keepalive_body_checks_still_apply(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    check = HttpCheck(url=f"{http_server_v4.base}/ok", keepalive=True, body_regex="unhealthy")
    probe = factory.build(check, 0.5)
    assert isinstance(probe, LeanHttpProbe)
    assert (await probe.check()).reason == "body does not match /unhealthy/"
    probe.close()


OK_KEEPALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class RawServer:
    """A loopback HTTP server scripted per connection: `serve(n)` says what the n-th request on
    a connection gets: response bytes, or None to close the connection without answering."""

    def __init__(self, serve: Callable[[int], bytes | None], close_after_s: float | None) -> None:
        self.serve = serve
        self.close_after_s = close_after_s  # close an idle connection this long after answering
        self.connections = 0
        self.requests: list[bytes] = []
        self.idle_closed = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                self.requests.append(request)
                n += 1
                answer = self.serve(n)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_s is not None:
                    await asyncio.sleep(self.close_after_s)
                    self.idle_closed.set()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def raw_server(request: pytest.FixtureRequest) -> AsyncIterator[RawServer]:
    serve, close_after_s = request.param
    raw = RawServer(serve, close_after_s)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    yield raw
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("raw_server", [(lambda n: OK_KEEPALIVE, 0.05)], indirect=True)
async def test_keepalive_notices_the_server_closing_an_idle_connection(
    factory: ProbeFactory, raw_server: RawServer
) -> None:
    url = f"http://127.0.0.1:{raw_server.port}/"
    probe = factory.build(HttpCheck(url=url, keepalive=True), 0.5)
    assert (await probe.check()).ok
    await asyncio.wait_for(raw_server.idle_closed.wait(), 5)
    result = await probe.check()
    assert result.ok, result.reason
    assert raw_server.connections == 2


@pytest.mark.parametrize(
    "raw_server", [(lambda n: OK_KEEPALIVE if n == 1 else None, None)], indirect=True
)
async def test_keepalive_retries_once_when_the_kept_connection_dies_under_the_request(
    factory: ProbeFactory, raw_server: RawServer
) -> None:
    # The second request on a connection is dropped unanswered, as when a server closes an idle
    # connection just as the request goes out: the probe retries on a fresh connection.
    url = f"http://127.0.0.1:{raw_server.port}/"
    probe = factory.build(HttpCheck(url=url, keepalive=True), 0.5)
    for _ in range(3):
        result = await probe.check()
        assert result.ok, result.reason
    assert raw_server.connections == 3


@pytest.mark.parametrize("raw_server", [(lambda n: None, None)], indirect=True)
async def test_a_fresh_connection_dropped_unanswered_fails_without_a_retry(
    factory: ProbeFactory, raw_server: RawServer
) -> None:
    url = f"http://127.0.0.1:{raw_server.port}/"
    probe = factory.build(HttpCheck(url=url, keepalive=True), 0.5)
    result = await probe.check()
    assert result.reason == f"127.0.0.1:{raw_server.port} closed the connection without a response"
    assert raw_server.connections == 1


@pytest.mark.parametrize("raw_server", [(lambda n: OK_KEEPALIVE, None)], indirect=True)
async def test_credentials_in_the_url_go_as_basic_auth_not_in_the_host_header(
    factory: ProbeFactory, raw_server: RawServer
) -> None:
    url = f"http://edge:s3cret@127.0.0.1:{raw_server.port}/health"
    result = await factory.build(HttpCheck(url=url), 0.5).check()
    assert result.ok, result.reason
    head = raw_server.requests[0].decode()
    assert f"\r\nHost: 127.0.0.1:{raw_server.port}\r\n" in head
    assert "\r\nAuthorization: Basic ZWRnZTpzM2NyZXQ=\r\n" in head  # edge:s3cret
    assert "s3cret" not in head


def _time_wait(port: int, peers: set[int]) -> int:
    """TIME_WAIT sockets (/proc/net/tcp, state 06) between `port` and one of `peers`: only the
    probe's own connections, whatever other tests on this machine leave behind."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ends = {int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)}
        count += fields[3] == "06" and port in ends and bool(ends & peers)
    return count


async def test_fresh_connections_leave_no_time_wait_behind(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    # Closed with a reset: thousands of probes a second must not fill either end's tables.
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok"), 0.5)
    for _ in range(5):
        assert (await probe.check()).ok
    peers = set(http_server_v4.seen.peer_ports)
    assert len(peers) == 5
    assert _time_wait(int(http_server_v4.base.rsplit(":", 1)[1]), peers) == 0


def test_chunked_body_is_decoded() -> None:
    assert dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") == (b"abcde", True)
    assert dechunk(b"3\r\nabc\r\n2\r\nd") == (b"abcd", False)
    with pytest.raises(BadResponse, match="invalid chunk size"):
        dechunk(b"zz\r\n")


@pytest.mark.parametrize("size", [b"-6", b"+6", b"0x6", b"6_0", b" "])
def test_a_chunk_size_that_is_not_hex_digits_is_refused(size: bytes) -> None:
    # int(x, 16) takes all of these; "-6" used to walk the decoder backwards for ever.
    with pytest.raises(BadResponse, match="invalid chunk size"):
        dechunk(size + b"\r\nabcdef\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nok", "invalid Content-Length"),
        ("HTTP/1.1 200 OK\r\n Content-Length: 2\r\n\r\nok", "invalid header line"),
    ],
)
@pytest.mark.parametrize("need_headers", [False, True])
def test_bad_framing_is_refused_by_both_header_parses(
    raw: str, error: str, need_headers: bool
) -> None:
    parser = ResponseParser(need_body=True, need_headers=need_headers, head_only=False,
                            limit=1024)  # fmt: skip
    with pytest.raises(BadResponse, match=error):
        parser.feed(raw.encode("latin-1"))


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


_NAMES = st.sampled_from(
    ["Content-Length", "content-length", "Connection", "Transfer-Encoding", "X-Content-Length",
     "Content-Length-X", "Server", "Date", "Keep-Alive"]
)  # fmt: skip
_VALUES = st.sampled_from(["0", "2", "5", "close", "keep-alive", "chunked", "x", "12:30:00", ""])


@given(
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    body=st.sampled_from([b"", b"ok", b"2\r\nok\r\n0\r\n\r\n", b"hello"]),
)
def test_framing_fast_path_reads_the_response_as_the_full_header_parse(
    fields: list[tuple[str, str]], body: bytes
) -> None:
    # Keep-alive checks find the framing fields without parsing every header: same verdicts.
    raw = b"HTTP/1.1 200 OK" + b"".join(f"\r\n{n}: {v}".encode() for n, v in fields)
    raw += b"\r\n\r\n" + body

    def read(need_headers: bool) -> tuple[object, ...]:
        parser = ResponseParser(need_body=True, need_headers=need_headers, head_only=False,
                                limit=1024)  # fmt: skip
        try:
            response = parser.feed(raw)
            if response is None:
                response = parser.eof()
        except (BadResponse, ServerClosed) as exc:
            return (type(exc), str(exc))
        return (response.status, response.body, parser.reusable)

    assert read(need_headers=False) == read(need_headers=True)


def test_a_header_line_without_a_colon_is_refused() -> None:
    parser = ResponseParser(need_body=True, need_headers=False, head_only=False, limit=1024)
    with pytest.raises(BadResponse, match="invalid header line 'garbage'"):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ngarbage\r\n\r\nok")


def test_a_chunk_size_line_is_bounded() -> None:
    # A hostile edge used to get 25 MiB buffered and 7 s of CPU out of one check.
    with pytest.raises(BadResponse, match="chunk-size line longer than 64 bytes"):
        dechunk(b"1" * (CHUNK_LINE_LIMIT + 1))
    assert dechunk(b"5;ext=" + b"x" * 50) == (b"", False)  # still waiting, within the bound


def test_tiny_chunks_cannot_make_the_parser_buffer_without_bound() -> None:
    parser = ResponseParser(need_body=True, need_headers=False, head_only=False, limit=1024)
    assert parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") is None
    response = None
    fed = 0
    while response is None and fed < 100_000:
        response = parser.feed(b"1\r\nx\r\n" * 64)
        fed += 64 * 6
    assert response is not None and fed <= 2 * 1024 + 16 * 1024 + 64 * 6
    assert response.body == b"x" * len(response.body)
