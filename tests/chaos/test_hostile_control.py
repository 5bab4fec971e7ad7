"""Chaos R34 against the running agent, judged at the upstream: no browser page and no caller
without the credential can move a route, on loopback too."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.chaos.faults import SESSION, assert_no_update
from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.topology import PopLab, PopLabFactory
from tests.lab.wait import wait_for

WEB = "192.0.2.10/32"
URL = "http://127.0.0.1:9179/v1/drain"

only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def announcing(factory: PopLabFactory, version: str, edges: list[int]) -> AgentLab:
    """The agent running under ExaBGP with service web up, its route at BIRD."""
    agent = AgentLab(factory(exabgp_version=version), [ServiceSpec("web", [WEB], edges=edges)])
    agent.start()
    agent.lab.bird.wait_route(WEB, timeout_s=10)
    agent.wait_log("announce 192.0.2.10/32")
    return agent


@only_50
def test_no_page_and_no_stranger_can_drain_the_pop(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = announcing(pop_lab_factory, exabgp_version, edges=[0])
    lab = agent.lab
    token = (lab.workdir / "state" / "control.token").read_text().strip()
    bearer = f"Authorization: Bearer {token}"
    json_type = "Content-Type: application/json"
    attempts = {
        "no token": [json_type],
        "a wrong token": [json_type, "Authorization: Bearer guessed"],
        "a simple POST (text/plain)": [bearer, "Content-Type: text/plain"],
        "a form POST": [bearer, "Content-Type: application/x-www-form-urlencoded"],
        "an Origin": [bearer, json_type, "Origin: http://evil.example"],
        "a rebinding Host": [bearer, json_type, "Host: evil.example:9179"],
    }
    before = lab.bird.import_counters(SESSION)
    seen = {}
    for what, headers in attempts.items():
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]
        for header in headers:
            argv += ["-H", header]
        out = lab.pop.run([*argv, "-d", '{"reason": "pwned"}', URL])
        seen[what] = int(out.stdout)
    assert seen == {
        "no token": 401,
        "a wrong token": 401,
        "a simple POST (text/plain)": 415,
        "a form POST": 415,
        "an Origin": 403,
        "a rebinding Host": 403,
    }
    assert_no_update(lab.bird, WEB, before, 1.0)
    # The operator's CLI, which finds the token through --config, still can.
    drain = [sys.executable, "-m", "anycast_agent", "drain", "--all", "--reason", "r34", "--yes"]
    lab.pop.run([*drain, "--config", str(agent.config_path)])
    wait_for(lambda: [r.med for r in lab.bird.route(WEB)], lambda m: m == [4294967294], timeout_s=5)
    print(f"\n[R34] refused: {seen}; BIRD counters unchanged; the CLI with the made token drains")


IDLE_CLIENTS = r"""
import socket, sys, time
held = []
for _ in range(int(sys.argv[1])):
    try:
        held.append(socket.create_connection(("127.0.0.1", 9179), timeout=1))
    except OSError:
        pass
time.sleep(float(sys.argv[2]))
print(len(held))
"""


def failed_probes(lab: PopLab) -> float:
    out = lab.pop.run(["curl", "-sf", "http://127.0.0.1:9179/metrics"]).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in out.splitlines()
        if line.startswith("anycast_agent_target_probes_total{") and 'result="failed"' in line
    )


@only_50
def test_idle_connections_cannot_starve_the_probes(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # R36: 500 idle connections against an agent allowed 256 open files.
    agent = announcing(pop_lab_factory, exabgp_version, edges=[0, 1])
    lab = agent.lab
    subprocess.run(["prlimit", f"--pid={agent.agent_pid()}", "--nofile=256:"], check=True)
    before, failed = lab.bird.import_counters(SESSION), failed_probes(lab)
    mark = len(agent.log())
    script = lab.workdir / "idle_clients.py"
    script.write_text(IDLE_CLIENTS)
    held = lab.pop.run([sys.executable, str(script), "500", "3"], timeout_s=60).stdout.strip()
    assert_no_update(lab.bird, WEB, before, 0.5)
    assert failed_probes(lab) == failed
    assert "checker fault" not in agent.log()[mark:]
    print(
        f"\n[R36] 500 idle connections ({held} held at the client side) with 256 open files: "
        "no failed probe, no UPDATE"
    )


STORM = r"""
import asyncio, json, sys, time

TOKEN, RATE, SECONDS, CONNS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), 16


async def worker(index, statuses, deadline):
    interval = CONNS / RATE
    next_at, n = time.monotonic(), index
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", 9179)
        path, body = ("/v1/drain", b'{"reason": "storm"}') if n % 2 == 0 else ("/v1/undrain", b"{}")
        writer.write(
            (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            + body
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            writer = None
            statuses["reset"] = statuses.get("reset", 0) + 1
            continue
        lines = head.decode().split("\r\n")
        length = next(int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length"))
        await reader.readexactly(length)
        status = lines[0].split()[1]
        statuses[status] = statuses.get(status, 0) + 1
        n += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def main():
    statuses = {}
    started = time.monotonic()
    deadline = started + SECONDS
    await asyncio.wait_for(
        asyncio.gather(*(worker(i, statuses, deadline) for i in range(CONNS))), SECONDS + 10
    )
    print(json.dumps({"statuses": statuses, "elapsed": time.monotonic() - started}))


asyncio.run(main())
"""


@only_50
def test_a_storm_of_valid_calls_changes_the_route_at_most_once_per_interval(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # R35: 1,000 authenticated drain/undrain calls a second for 10 s, min_update_interval 10 s.
    agent = announcing(pop_lab_factory, exabgp_version, edges=[0, 1])
    lab = agent.lab
    token = (lab.workdir / "state" / "control.token").read_text().strip()
    script = lab.workdir / "storm.py"
    script.write_text(STORM)
    before, failed = lab.bird.import_counters(SESSION), failed_probes(lab)
    out_path = lab.workdir / "storm.out"
    storm = lab.pop.popen([sys.executable, str(script), token, "1000", "10"], stdout_path=out_path)
    seen: list[tuple[float, object]] = []  # each change of the route at BIRD, and when
    started = time.monotonic()
    ended = None  # the route is watched 2 s past the storm, for a change it left pending
    while (ended is None or time.monotonic() < ended + 2) and time.monotonic() - started < 30:
        if ended is None and storm.poll() is not None:
            ended = time.monotonic()
        attrs = [(r.med, r.as_path) for r in lab.bird.route(WEB)]
        if not seen or seen[-1][1] != attrs:
            seen.append((time.monotonic() - started, attrs))
        time.sleep(0.1)
    assert storm.wait(timeout=5) == 0
    result = json.loads(out_path.read_text())
    statuses, elapsed = result["statuses"], result["elapsed"]
    sent = sum(statuses.values())
    updates = lab.bird.import_counters(SESSION) - before
    changes = updates.updates_received + updates.withdraws_received
    print(
        f"\n[R35] {sent} calls in {elapsed:.1f}s ({sent / elapsed:.0f}/s): {statuses}; "
        f"{changes} UPDATE(s) at BIRD; route seen as {[(round(t, 1), a) for t, a in seen]}"
    )
    assert sent >= 8000, "the storm did not reach 800 calls a second"
    assert statuses.get("429", 0) >= sent - 100
    assert set(statuses) <= {"200", "409", "429"}  # accepted, undrain of no drain, too many
    answered = statuses.get("200", 0) + statuses.get("409", 0)
    assert 20 <= answered <= 20 + 5 * (elapsed + 1) + 10  # a burst of 20, then 5 a second
    # The first change at once, the rest coalesced: at most one more, 10 s later.
    assert 1 <= changes <= 2
    assert len(seen) - 1 == changes
    if changes == 2:
        assert seen[2][0] - seen[1][0] >= 9.5
    assert failed_probes(lab) == failed, "a probe of a healthy edge failed during the storm"
