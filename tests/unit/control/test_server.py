"""The server's lifecycle in the test's loop: TCP and unix sockets, token files, bounded stop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from anycast_agent.config import Control
from anycast_agent.control.server import ControlServer, default_hosts, load_token
from anycast_agent.errors import ConfigError
from tests.unit.control.conftest import AUTH, TOKEN, FakeController


def tcp_address(server: ControlServer) -> tuple[str, int]:
    address = server.address
    assert isinstance(address, tuple)
    return address


def test_load_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    for mode in (0o600, 0o400, 0o640, 0o440):
        path.chmod(mode)
        assert load_token(path) == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o620, 0o602, 0o666, 0o601])
def test_load_token_refuses_loose_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_token(path)
    assert info.value.source == str(path)
    assert f"{mode:04o}" in str(info.value)


@pytest.mark.parametrize("text", ["", "  \n", "two words", "tök"])
def test_load_token_refuses_unusable_tokens(tmp_path: Path, text: str) -> None:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="token"):
        load_token(path)


def test_load_token_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "absent")


def test_from_config_reads_the_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    control = Control(listen="127.0.0.1:0", token_file=path)
    with pytest.raises(ConfigError):
        ControlServer.from_config(FakeController(), control, tmp_path)


async def test_without_a_token_file_loopback_still_needs_the_token_the_agent_made(
    tmp_path: Path,
) -> None:
    # R34: on loopback too, a change needs a credential; the agent makes one (0600) at its
    # first start, and keeps it across restarts.
    server = ControlServer.from_config(FakeController(), Control(listen="127.0.0.1:0"), tmp_path)
    made = tmp_path / "control.token"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    token = made.read_text().strip()
    again = ControlServer.from_config(FakeController(), Control(listen="127.0.0.1:0"), tmp_path)
    assert made.read_text().strip() == token and again.app is not server.app
    await server.start()
    try:
        host, port = server.address
        async with aiohttp.ClientSession() as session:
            url = f"http://{host}:{port}/v1/undrain"
            async with session.post(url, json={}) as resp:
                assert resp.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(url, json={}, headers=headers) as resp:
                assert resp.status == 200
    finally:
        await server.stop()


def test_a_unix_socket_needs_no_token_file(tmp_path: Path) -> None:
    control = Control(listen=f"unix:{tmp_path}/c.sock")
    ControlServer.from_config(FakeController(), control, tmp_path)
    assert not (tmp_path / "control.token").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_tcp_start_serve_stop(host: str) -> None:
    listen = f"[{host}]:0" if ":" in host else f"{host}:0"
    server = ControlServer(FakeController(), listen, TOKEN)
    await server.start()
    bound_host, port = tcp_address(server)
    assert port > 0 and bound_host == host
    url = f"http://{server.describe()}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/readyz") as resp:
            assert resp.status == 200
        async with session.post(url + "/v1/reload", headers=AUTH) as resp:
            assert resp.status == 200
    await server.stop()
    await server.stop()  # idempotent
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/readyz")


async def test_unix_socket_mode_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.touch()
    path.unlink()
    # A stale socket left by a previous (respawned) agent is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    async with ControlServer(FakeController(), f"unix:{path}", None) as server:
        assert server.address == str(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        conn = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=conn) as session,
            session.post("http://agent/v1/undrain", json={}) as resp,
        ):
            assert resp.status == 200
    assert not path.exists()


async def test_stop_is_bounded_with_a_request_in_flight() -> None:
    ctl = FakeController(block=asyncio.Event())  # never set: the intent hangs
    server = ControlServer(ctl, "127.0.0.1:0", TOKEN)
    await server.start()
    host, port = tcp_address(server)
    session = aiohttp.ClientSession()
    request = asyncio.create_task(session.post(f"http://{host}:{port}/v1/reload", headers=AUTH))
    await ctl.called.wait()
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 0.5
    with pytest.raises(aiohttp.ClientError):
        await request
    await session.close()


async def test_start_twice_and_address_before_start() -> None:
    server = ControlServer(FakeController(), "127.0.0.1:0", None)
    with pytest.raises(RuntimeError):
        _ = server.address
    async with server:
        with pytest.raises(RuntimeError):
            await server.start()


async def test_port_in_use_fails_start() -> None:
    async with ControlServer(FakeController(), "127.0.0.1:0", None) as first:
        _, port = tcp_address(first)
        with pytest.raises(OSError):
            await ControlServer(FakeController(), f"127.0.0.1:{port}", None).start()


def test_the_hosts_a_request_may_name() -> None:
    assert default_hosts("192.0.2.1:9179", ()) == {"192.0.2.1", "localhost", "127.0.0.1", "::1"}
    assert default_hosts("[2001:db8::1]:9179", ()) >= {"2001:db8::1"}
    assert default_hosts("0.0.0.0:9179", ("Router1.Example", "[2001:db8::2]")) == {
        "router1.example",
        "2001:db8::2",
    }


async def test_idle_and_excess_connections_are_closed_and_requests_still_served() -> None:
    # R36: idle or slow clients must never take the file descriptors the probes need.
    server = ControlServer(
        FakeController(), "127.0.0.1:0", TOKEN, max_connections=3, head_timeout_s=0.3
    )
    await server.start()
    try:
        host, port = server.address
        idle = [await asyncio.open_connection(host, port) for _ in range(5)]
        closed_at_once = 0
        for reader, _ in idle[3:]:  # over the cap: closed as they come
            closed_at_once += await asyncio.wait_for(reader.read(1), 1.0) == b""
        assert closed_at_once == 2
        _, slow_writer = idle[0]
        slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        for reader, _ in idle[:3]:  # no complete head within 0.3 s: cut
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
        assert server.site is not None and server.site.guard is not None
        assert server.site.guard.open == 0 and server.site.guard.cut == 3
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as resp,
        ):
            assert resp.status in (200, 503)
        for _, writer in idle:
            writer.close()
    finally:
        await server.stop()


async def test_a_change_over_the_unix_socket_is_audited_with_the_peers_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(FakeController(), f"unix:{path}", None)
    await server.start()
    try:
        with caplog.at_level(logging.INFO, logger="anycast_agent.control"):
            async with (
                aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s,
                s.post("http://agent/v1/undrain", json={}) as resp,
            ):
                assert resp.status == 200
    finally:
        await server.stop()
    line = next(r.getMessage() for r in caplog.records if "control: undrain-pop" in r.getMessage())
    assert f"pid {os.getpid()} uid {os.getuid()} gid {os.getgid()}" in line


async def test_a_body_that_does_not_arrive_in_time_is_refused_and_changes_nothing() -> None:
    controller = FakeController()
    server = ControlServer(controller, "127.0.0.1:0", TOKEN, body_timeout_s=0.3)
    await server.start()
    try:
        host, port = tcp_address(server)
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            f"POST /v1/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
        )
        writer.write(head.encode() + b'{"reason": "sl')  # the rest never comes
        started = time.monotonic()
        head_back = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
        assert head_back.startswith(b"HTTP/1.1 408"), head_back[:80]
        length = next(
            int(line.split(b":")[1])
            for line in head_back.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), 1.0)
        assert b"the body did not arrive within 0.3s" in body
        assert time.monotonic() - started < 2.0
        assert controller.calls == []
        writer.close()
    finally:
        await server.stop()


async def test_stop_never_unlinks_a_socket_another_process_made(tmp_path: Path) -> None:
    # R8: the old agent's exit must not take the new agent's socket with it.
    path = tmp_path / "control.sock"
    server = ControlServer(FakeController(), f"unix:{path}", None)
    await server.start()
    path.unlink()
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(path))
    try:
        await server.stop()
        assert path.exists() and stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        theirs.close()


async def test_a_live_unix_socket_is_never_taken_over(tmp_path: Path) -> None:
    # Review: a dry run on the same config unlinked the running agent's socket.
    path = tmp_path / "control.sock"
    live = ControlServer(FakeController(), f"unix:{path}", None)
    await live.start()
    try:
        second = ControlServer(FakeController(), f"unix:{path}", None)
        assert not await second.serve(retry_s=0.2)
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s,
            s.get("http://agent/healthz") as resp,
        ):
            assert resp.status in (200, 503)  # still the live one's
    finally:
        await live.stop()
