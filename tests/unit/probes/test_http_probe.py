"""HTTP probe against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycast_agent.config import HttpCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.http import json_load, parse_load
from tests.unit.probes.conftest import HttpServer, SilentServer

TIMEOUT_S = 0.5


async def run(factory: ProbeFactory, timeout_s: float = TIMEOUT_S, **check: object) -> ProbeResult:
    return await factory.build(HttpCheck.model_validate(check), timeout_s).check()


async def test_200_is_ok(factory: ProbeFactory, http_server: HttpServer) -> None:
    result = await run(factory, url=f"{http_server.base}/ok")
    assert result.ok, result.reason
    assert result.reason == ""
    assert result.load is None
    assert 0 < result.latency_s < TIMEOUT_S
    assert http_server.seen.methods == ["GET"]


async def test_500_fails_naming_the_status(factory: ProbeFactory, http_server: HttpServer) -> None:
    result = await run(factory, url=f"{http_server.base}/status/500")
    assert not result.ok
    assert result.reason == "status 500 not in [200]"


async def test_expect_status_set(factory: ProbeFactory, http_server_v4: HttpServer) -> None:
    url = f"{http_server_v4.base}/status/204"
    assert (await run(factory, url=url, expect_status=[200, 204])).ok
    result = await run(factory, url=url, expect_status=[200, 503])
    assert result.reason == "status 204 not in [200, 503]"


async def test_redirect_is_not_followed(factory: ProbeFactory, http_server_v4: HttpServer) -> None:
    result = await run(factory, url=f"{http_server_v4.base}/redirect")
    assert result.reason == "status 302 not in [200]"
    assert len(http_server_v4.seen.methods) == 1


@pytest.mark.parametrize(
    ("regex", "ok"),
    [("hello: (healthy|degraded)$", True), ("^edge says", True), ("unhealthy", False)],
)
async def test_body_regex(
    factory: ProbeFactory, http_server_v4: HttpServer, regex: str, ok: bool
) -> None:
    result = await run(factory, url=f"{http_server_v4.base}/ok", body_regex=regex)
    assert result.ok is ok
    assert result.reason == ("" if ok else f"body does not match /{regex}/")


async def test_body_is_read_only_up_to_64_kib(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    url = f"{http_server_v4.base}/big"
    assert (await run(factory, url=url, body_regex="a{65536}")).ok
    assert not (await run(factory, url=url, body_regex="NEEDLE")).ok


async def test_host_header_reaches_the_server(
    factory: ProbeFactory, http_server: HttpServer
) -> None:
    result = await run(factory, url=f"{http_server.base}/ok", host="www.example.test")
    assert result.ok, result.reason
    assert http_server.seen.hosts == ["www.example.test"]


async def test_head(factory: ProbeFactory, http_server_v4: HttpServer) -> None:
    result = await run(factory, url=f"{http_server_v4.base}/ok", method="HEAD")
    assert result.ok, result.reason
    assert http_server_v4.seen.methods == ["HEAD"]


async def test_every_probe_opens_a_fresh_connection(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    probe = factory.build(HttpCheck(url=f"{http_server_v4.base}/ok"), TIMEOUT_S)
    for _ in range(3):
        assert (await probe.check()).ok
    ports = http_server_v4.seen.peer_ports
    assert len(ports) == 3
    assert len(set(ports)) == 3, f"a connection was reused: client ports {ports}"


@pytest.mark.parametrize(
    ("value", "load"), [("0.42", 0.42), ("1.7", 1.0), ("-3", 0.0), ("busy", None), ("nan", None)]
)
async def test_load_from_header(
    factory: ProbeFactory, http_server_v4: HttpServer, value: str, load: float | None
) -> None:
    result = await run(factory, url=f"{http_server_v4.base}/load?v={value}", load_header="X-Load")
    assert result.ok, result.reason
    assert result.reason == ""
    assert result.load == load


@pytest.mark.parametrize(
    ("body", "load"),
    [
        ({"stats": {"load": 0.7}}, 0.7),
        ({"stats": {"load": "0.25"}}, 0.25),
        ({"stats": {"load": True}}, None),
        ({"stats": {}}, None),
        ({"stats": [0.5]}, None),
        ("not json", None),
    ],
)
async def test_load_from_json_field(
    factory: ProbeFactory, http_server_v4: HttpServer, body: object, load: float | None
) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    url = f"{http_server_v4.base}/json?body={text}"
    result = await run(factory, url=url, load_json_field="stats.load")
    assert result.ok, result.reason
    assert result.load == load


def test_json_load_walks_lists_by_index() -> None:
    assert (
        json_load(b'{"backends": [{"load": 0.1}, {"load": 0.9}]}', ("backends", "1", "load")) == 0.9
    )
    assert json_load(b'{"backends": [{"load": 0.1}]}', ("backends", "5", "load")) is None


def test_json_load_of_a_deeply_nested_body_is_no_figure() -> None:
    assert json_load(b"[" * 70000, ("load",)) is None


@given(st.text())
def test_parse_load_is_none_or_within_0_and_1(text: str) -> None:
    load = parse_load(text)
    assert load is None or 0.0 <= load <= 1.0


async def test_silent_server_times_out(factory: ProbeFactory, silent_server: SilentServer) -> None:
    timeout_s = 0.3
    started = time.monotonic()
    result = await run(factory, timeout_s=timeout_s, url=f"http://{silent_server.where}/ok")
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.reason == "timeout after 0.3s"
    assert timeout_s <= result.latency_s <= elapsed < timeout_s + 0.2


async def test_connection_refused(factory: ProbeFactory, closed_port: int) -> None:
    result = await run(factory, url=f"http://127.0.0.1:{closed_port}/ok")
    assert not result.ok
    assert result.reason == f"connect refused 127.0.0.1:{closed_port}"
    assert result.latency_s < TIMEOUT_S


async def test_self_signed_certificate_fails_when_verifying(
    factory: ProbeFactory, https_server: HttpServer
) -> None:
    result = await run(factory, url=f"{https_server.base}/ok")
    assert not result.ok
    assert result.reason.startswith(f"TLS certificate of {https_server.base[8:]} rejected: ")
    assert "self-signed certificate" in result.reason
    assert https_server.seen.methods == []


async def test_self_signed_certificate_passes_without_verify(
    factory: ProbeFactory, https_server: HttpServer
) -> None:
    result = await run(factory, url=f"{https_server.base}/ok", verify_tls=False)
    assert result.ok, result.reason
    assert https_server.seen.methods == ["GET"]


async def test_server_name_sets_sni(factory: ProbeFactory, https_server: HttpServer) -> None:
    url = f"{https_server.base}/ok"
    assert (await run(factory, url=url, verify_tls=False)).ok
    assert (await run(factory, url=url, verify_tls=False, server_name="edge.test")).ok
    # No SNI for an IP literal (RFC 6066), then the configured name.
    assert https_server.seen.sni == [None, "edge.test"]


async def test_cancel_propagates(factory: ProbeFactory, silent_server: SilentServer) -> None:
    probe = factory.build(HttpCheck(url=f"http://{silent_server.where}/ok"), 5.0)
    task = asyncio.create_task(probe.check())
    await asyncio.wait_for(silent_server.accepted.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tls_to_a_plain_http_server_fails_cleanly(
    factory: ProbeFactory, http_server_v4: HttpServer
) -> None:
    url = http_server_v4.base.replace("http://", "https://") + "/ok"
    result = await run(factory, url=url, verify_tls=False)
    assert not result.ok
    assert result.reason.startswith(f"TLS handshake with {http_server_v4.base[7:]} failed: ")


@pytest.mark.parametrize(
    ("linger", "reason"),
    [
        (False, "{where} closed the connection without a response"),
        (True, "connection to {where} failed: Connection reset by peer"),
    ],
)
async def test_server_that_hangs_up_fails_cleanly(
    factory: ProbeFactory, linger: bool, reason: str
) -> None:
    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        if linger:  # close with RST instead of FIN
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run(factory, url=f"http://127.0.0.1:{port}/ok")
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert result.reason == reason.format(where=f"127.0.0.1:{port}")
