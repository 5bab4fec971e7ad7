"""One fuzz target per surface, each a hypothesis strategy and a check with one oracle: no input
crashes the agent, nothing outside the allowlist and the grammar is rendered, and no input
changes a route without a valid credential."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import yaml
from hypothesis import strategies as st

from anycast_agent.config import load_config
from anycast_agent.control import api
from anycast_agent.control.server import ControlServer
from anycast_agent.errors import ConfigError
from anycast_agent.probes.http_parse import BadResponse, ResponseParser, ServerClosed
from anycast_agent.speaker.channel import Channel
from anycast_agent.speaker.grammar import (
    parse_adj_rib_out,
    parse_inbound,
    parse_neighbor_summary,
)
from tests.unit.control.conftest import FakeController

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TOKEN = "fuzz-token-0123456789"
CONFIG = {
    "pop": "ams1",
    "state_dir": "/nonexistent/anycast-agent-fuzz",
    "bgp": {
        "local_as": 65001,
        "router_id": "198.51.100.2",
        "neighbors": [
            {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000}
        ],
    },
    "defaults": {"interval": "1s", "timeout": "800ms"},
    "services": [
        {
            "name": "web",
            "prefixes": ["192.0.2.10/32"],
            "communities": ["65001:100"],
            "targets": [
                {"name": "edge1", "http": {"url": "http://203.0.113.11:8080/health"}},
                {"name": "edge2", "dns": {"server": "203.0.113.13", "name": "example.test"}},
            ],
        }
    ],
}


@dataclass(frozen=True)
class Surface:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]  # raises AssertionError (or anything) on a finding
    report: Callable[[], str] = lambda: ""  # what the run reached, for the printout


# -- bytes mutated from a seed ----------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        where = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"])):
            case "flip" if data:
                data[min(where, len(data) - 1)] = draw(st.integers(0, 255))
            case "insert":
                data[where:where] = draw(st.binary(max_size=12) | st.sampled_from(HOSTILE))
            case "delete":
                del data[where : where + draw(st.integers(1, 16))]
            case "truncate":
                del data[where:]
            case "repeat":
                data[where:where] = data[where : where + 64] * draw(st.integers(2, 50))
    return bytes(data)


HOSTILE = [
    b"\r\n",
    b"\n",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"{",
    b"[",
    b"]",
    b'"',
    b"&a",
    b"*a",
    b"!!python/object:os.system",
    b"9" * 40,
    b"-1",
    b"NaN",
    b"true",
    b"null",
    b"\t",
    b"  ",
    b": ",
    b"- ",
    b"\xe2\x80\xa8",
]


# -- config files -------------------------------------------------------------------------------


def _config_seeds() -> list[bytes]:
    base = yaml.safe_dump(CONFIG, sort_keys=False).encode()
    bomb = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
        for i in range(12)
    )
    return [base, base + b"services: []\n", b"1: x\n" + base, bomb, b"_env_file: /etc/passwd\n"]


def check_config(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
        f.write(data)
        f.flush()
        try:
            load_config(f.name)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


# -- ExaBGP messages ---------------------------------------------------------------------------


def _exabgp_seeds() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(SAMPLES.glob("exabgp-*/*.txt")):
        lines += [
            line.encode() for line in path.read_text().splitlines() if not line.startswith("#")
        ]
    return [line for line in lines if line] + [b"done", b"error", b"shutdown"]


@st.composite
def exabgp_streams(draw: st.DrawFn) -> bytes:
    """Several lines of both versions' shapes, mutated, interleaved with acks."""
    lines = draw(st.lists(mutated(_exabgp_seeds()), min_size=1, max_size=8))
    acks = draw(st.lists(st.sampled_from([b"done", b"error", b"shutdown"]), max_size=4))
    for ack in acks:
        lines.insert(draw(st.integers(0, len(lines))), ack)
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))


def check_exabgp(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    for line in lines:
        parse_inbound(line)
    parse_adj_rib_out(lines)
    parse_neighbor_summary(lines)

    async def read() -> None:  # the channel reads any byte stream to its end
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()

        async def write(_: bytes) -> None:
            raise AssertionError("nothing is written while only reading")

        channel = Channel(reader, write)
        await asyncio.wait_for(channel.read_forever(), 5)
        assert channel.closed.is_set()

    _LOOP.run_until_complete(read())


_LOOP = asyncio.new_event_loop()  # one loop for every input: asyncio.run() each would dominate


# -- probe responses ---------------------------------------------------------------------------


def _http_seeds() -> list[bytes]:
    return [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 503 Service Unavailable\r\nX-Load: 0.5\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody until close",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]


@st.composite
def http_responses(draw: st.DrawFn) -> tuple[bytes, list[int], tuple[bool, bool, bool]]:
    data = draw(mutated(_http_seeds()))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return data, cuts, draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))


def check_http(case: tuple[bytes, list[int], tuple[bool, bool, bool]]) -> None:
    data, cuts, (need_body, need_headers, head_only) = case
    parser = ResponseParser(
        need_body=need_body, need_headers=need_headers, head_only=head_only, limit=64
    )
    try:
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            response = parser.feed(data[start:end])
            if response is not None:
                assert len(response.body) <= 64
                return
        parser.eof()
    except (BadResponse, ServerClosed):
        return


def _dns_seeds() -> list[bytes]:
    question = b"\x07example\x04test\x00\x00\x01\x00\x01"
    reply = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question
    return [reply, reply + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xcb\x00\x71\x0b"]


def check_dns(data: bytes) -> None:
    # The probe reads replies with dnspython: over UDP any failure to parse is ignored (the wait
    # goes on), over TCP a DNSException fails the check; anything else would be a probe bug.
    try:
        reply = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return
    assert 0 <= reply.rcode() <= 4095


# -- the control API ---------------------------------------------------------------------------

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"G\x00T"]
PATHS = [
    b"/v1/drain",
    b"/v1/undrain",
    b"/v1/services/web/drain",
    b"/v1/services/web/med",
    b"/v1/services/web/ramp",
    b"/v1/services/w%0aeb/drain",
    b"/v1/reload",
    b"/v1/state/reset",
    b"/v1/status",
    b"/metrics",
    b"/healthz",
    b"/v1/../v1/drain",
    b"//v1/drain",
]
BODIES = [
    b'{"reason": "fuzz"}',
    b'{"med": 500, "reason": "fuzz"}',
    b'{"action": "advance"}',
    b'{"reason": "fuzz", "on_stop": true}',
    b"{}",
    b"[" * 5000,
    b'{"reason": "\\u0000\\n"}',
    b'{"med": true, "reason": "x"}',
]


def _authorization(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """Authorization header lines in every form; whether one of them carries the token (the
    scheme's case and surrounding whitespace do not matter, RFC 9110)."""
    carrying = [
        f"Authorization: Bearer {TOKEN}".encode(),
        f"authorization: bearer {TOKEN}".encode(),
        f"Authorization:Bearer  {TOKEN}".encode(),
        f"Authorization: Bearer {TOKEN} ".encode(),
    ]
    forms = [
        *carrying,
        f"Authorization: Bearer {TOKEN[:-1]}".encode(),
        f"Authorization: Bearer {TOKEN.upper()}".encode(),
        f"Authorization: Bearer {TOKEN}\x00".encode(),
        f"Authorization: Bearer {TOKEN}é".encode(),
        f"Authorization: Basic {TOKEN}".encode(),
        b"Authorization: Bearer",
        b"Authorization:",
    ]
    if draw(st.booleans()):
        lines = [draw(st.sampled_from(carrying))]
    else:
        lines = draw(st.lists(st.sampled_from(forms), max_size=3))
    return lines, any(line in carrying for line in lines)


VALID_CALLS = [
    (b"POST", b"/v1/services/web/drain", b'{"reason": "fuzz"}'),
    (b"POST", b"/v1/services/web/undrain", b"{}"),
    (b"PUT", b"/v1/services/web/med", b'{"med": 500, "reason": "fuzz"}'),
    (b"DELETE", b"/v1/services/web/med", b"{}"),
    (b"POST", b"/v1/drain", b'{"reason": "fuzz", "on_stop": true}'),
    (b"POST", b"/v1/undrain", b"{}"),
]


def _part(draw: st.DrawFn, valid: bytes, hostile: st.SearchStrategy[bytes]) -> bytes:
    """The valid value half of the time, so that whole valid calls are generated too."""
    return valid if draw(st.booleans()) else draw(hostile)


@st.composite
def control_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    method, path, body = draw(st.sampled_from(VALID_CALLS))
    method = _part(draw, method, st.sampled_from(METHODS))
    path = _part(draw, path, st.sampled_from(PATHS) | mutated(PATHS))
    body = _part(draw, body, st.sampled_from(BODIES) | mutated(BODIES))
    auth, credential = _authorization(draw)
    host = _part(draw, b"127.0.0.1", st.sampled_from([b"localhost", b"evil.example", b""]))
    kind = _part(draw, b"application/json", st.sampled_from([b"text/plain", b"application/JSON"]))
    headers = [b"Host: " + host, *auth, b"Content-Type: " + kind]
    headers += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    extra = draw(
        st.lists(st.sampled_from([b"Origin: http://evil.example", b"X: \xff"]), max_size=1)
    )
    head = b"\r\n".join([method + b" " + path + b" HTTP/1.1", *headers, *extra])
    return head + b"\r\n\r\n" + body, credential


class ControlTarget:
    """The real control endpoint, served from a thread, over a controller that counts changes."""

    def __init__(self) -> None:
        self.controller = FakeController()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        api.CHANGES_BURST, api.CHANGES_PER_S = 10**9, 10.0**9  # reach the handlers, not 429
        asyncio.set_event_loop(self._loop)
        server = ControlServer(self.controller, "127.0.0.1:0", TOKEN, max_connections=8)
        self._loop.run_until_complete(server.start())
        address = server.address
        assert isinstance(address, tuple)
        self.port = address[1]
        self._server = server
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(server.stop())

    def __enter__(self) -> ControlTarget:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def check(self, case: tuple[bytes, bool]) -> None:
        request, credential = case
        before = len(self.controller.calls)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)  # and no shutdown: a client gone early cancels the handler
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        status = answer[9:12]
        # Any HTTP answer (aiohttp answers a request line cut by a bare LF as HTTP/0.9), or a
        # closed connection; never a 500, and never a change without the credential.
        assert answer == b"" or answer.startswith(b"HTTP/"), answer[:80]
        # 503 is a designed answer (a stale agent, a failed write); 500 is a crash.
        assert status != b"500", (request[:200], answer[:300])
        changed = len(self.controller.calls) - before
        if changed:
            assert credential, ("a change without the credential", request[:300])
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) is not None


@contextmanager
def surfaces() -> Iterator[list[Surface]]:
    with ControlTarget() as control:
        yield [
            Surface(
                "control",
                control_requests(),
                control.check,
                lambda: (
                    f"{len(control.controller.calls)} changes reached the core, each "
                    "with the credential"
                ),
            ),
            Surface("config", mutated(_config_seeds()), check_config),
            Surface("exabgp", exabgp_streams(), check_exabgp),
            Surface("http", http_responses(), check_http),
            Surface("dns", mutated(_dns_seeds()), check_dns),
        ]
