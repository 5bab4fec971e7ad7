"""Real loopback servers for the probe tests: HTTP(S), a silent TCP peer, a full accept queue."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from anycast_agent.probes import ProbeFactory

LOOPBACKS = ["127.0.0.1", "::1"]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Seen:
    """What the test HTTP server received, one entry per request."""

    methods: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    peer_ports: list[int] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


@dataclass
class HttpServer:
    base: str
    seen: Seen


BIG_BODY = b"a" * (64 * 1024) + b"NEEDLE-PAST-LIMIT"


def _app(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> None:
        seen.methods.append(request.method)
        seen.hosts.append(request.headers.get("Host", ""))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.peer_ports.append(peer[1] if peer else -1)

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="edge says hello: healthy")

    async def status(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/ok")

    async def load_header(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="ok", headers={"X-Load": request.query["v"]})

    async def load_json(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=request.query["body"].encode(), content_type="application/json")

    async def big(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=BIG_BODY)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/load", load_header)
    app.router.add_get("/json", load_json)
    app.router.add_get("/big", big)
    return app


async def _serve(
    host: str, seen: Seen, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(_app(seen))
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://{url_host(host)}:{port}"


@pytest.fixture(params=LOOPBACKS)
async def http_server(request: pytest.FixtureRequest) -> AsyncIterator[HttpServer]:
    seen = Seen()
    runner, base = await _serve(request.param, seen, None)
    yield HttpServer(base, seen)
    await runner.cleanup()


@pytest.fixture
async def http_server_v4() -> AsyncIterator[HttpServer]:
    seen = Seen()
    runner, base = await _serve("127.0.0.1", seen, None)
    yield HttpServer(base, seen)
    await runner.cleanup()


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away certificate for CN edge.test (also valid for 127.0.0.1), made by openssl."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-days", "1",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-subj", "/CN=edge.test",
                "-addext", "subjectAltName=DNS:edge.test,IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a test certificate with openssl: {exc}")
    return cert, key


@pytest.fixture
async def https_server(self_signed: tuple[Path, Path]) -> AsyncIterator[HttpServer]:
    cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    seen = Seen()

    def on_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.sni.append(name)

    ctx.sni_callback = on_sni
    runner, base = await _serve("127.0.0.1", seen, ctx)
    yield HttpServer(base, seen)
    await runner.cleanup()


@dataclass
class SilentServer:
    where: str  # host:port
    accepted: asyncio.Event


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    """A server that accepts connections and never says a word."""
    hold = asyncio.Event()
    accepted = asyncio.Event()
    writers = []

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        accepted.set()
        await hold.wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield SilentServer(f"127.0.0.1:{port}", accepted)
    hold.set()
    for w in writers:
        w.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections: bound (so nobody else takes it), never
    listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A listening port whose accept queue is full: the kernel drops further SYNs, so a new
    connect hangs until its timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    addr = srv.getsockname()
    fillers: list[socket.socket] = []
    deadline = time.monotonic() + 5
    try:
        while True:
            assert time.monotonic() < deadline, "could not fill the accept queue"
            c = socket.socket()
            c.setblocking(False)
            fillers.append(c)
            c.connect_ex(addr)
            _, writable, _ = select.select([], [c], [], 0.2)
            if not writable:
                break
        yield addr[1]
    finally:
        for c in fillers:
            c.close()
        srv.close()


@pytest.fixture
async def factory() -> AsyncIterator[ProbeFactory]:
    async with ProbeFactory() as f:
        yield f


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` (something outside the loop: a file, /proc) until true or a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s"
        await asyncio.sleep(0.005)
