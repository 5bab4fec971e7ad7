"""The systemd unit: it verifies, its exposure stays low, its watchdog contract holds with the
real agent, exec probes get neither capabilities nor the notify socket, and SIGUSR2 upgrades
the agent under a running ExaBGP (4.2 and 5.0) without a single UPDATE at the upstream."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycast_agent import limits
from anycast_agent.config import Defaults
from tests.integration.agent_lab import INTERVAL_S, AgentLab, ServiceSpec
from tests.lab.exabgp import ExabgpVersion
from tests.lab.prereqs import require_tool
from tests.lab.topology import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
UNIT = "exabgp-anycast.service"
DROPINS = UNITS / f"{UNIT}.d"
DROPIN = DROPINS / "vip-manage.conf"
DRAIN_ON_STOP = DROPINS / "drain-on-stop.conf"
MAX_EXPOSURE = 2.5
FAULT_ENV = "ANYCAST_AGENT_FAULT_STALL_DECIDE_FILE"
WEB = "192.0.2.10/32"
SESSION = "pop0_v4"
NET_ADMIN = 1 << 12


def systemd_analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


@pytest.fixture(params=["base", "vip-manage", "drain-on-stop"])
def unit_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The unit (and, unless `base`, the drop-in of that name) with its Exec* lines pointing at
    stand-ins: `verify` insists that the binaries exist, and /usr/bin/exabgp and
    /usr/bin/anycast-agent are not installed on a CI runner. Nothing else changes."""
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)

    def stubbed(path: Path) -> str:
        text = path.read_text()
        return text.replace("/usr/bin/exabgp", str(stub)).replace(
            "/usr/bin/anycast-agent", str(stub)
        )

    units = tmp_path / "units"
    units.mkdir()
    (units / UNIT).write_text(stubbed(UNITS / UNIT))
    if request.param != "base":
        dropin = DROPINS / f"{request.param}.conf"
        (units / f"{UNIT}.d").mkdir()
        (units / f"{UNIT}.d" / dropin.name).write_text(stubbed(dropin))
    return units


def test_systemd_analyze_verify(unit_dir: Path) -> None:
    out = subprocess.run(
        [systemd_analyze(), "verify", str(unit_dir / UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on unknown keys too: any message at all is a finding.
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out


def test_security_exposure(unit_dir: Path) -> None:
    out = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(unit_dir / UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out
    exposure = float(match.group(1))
    dropins = sorted(p.name for p in (unit_dir / f"{UNIT}.d").glob("*.conf"))
    variant = f"with {', '.join(dropins)}" if dropins else "base"
    print(f"\n{UNIT} ({variant}): exposure {exposure} (limit {MAX_EXPOSURE})")
    assert exposure <= MAX_EXPOSURE


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_contract() -> None:
    unit = directives(UNITS / UNIT)
    one = {k: v[-1] for k, v in unit.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "all"
    assert one["Restart"] == "always" and one["RestartSec"] == "1"
    assert "StartLimitIntervalSec" in one and "StartLimitBurst" in one
    assert one["ExecStartPre"].endswith("check-config /etc/anycast-agent/agent.yaml")
    assert (
        one["ExecReload"] == "/usr/bin/anycast-agent reload --config /etc/anycast-agent/agent.yaml"
    )
    assert "HUP" not in " ".join(unit["ExecReload"])  # SIGHUP shuts ExaBGP down
    assert one["KillMode"] == "mixed"
    # ExaBGP SIGKILLs its helpers 2 s after SIGTERM; the stop timeout must leave it that time.
    assert int(one["TimeoutStopSec"].rstrip("s")) > 2
    assert one["User"] == "anycast-agent" and one["StateDirectory"] == "anycast-agent"
    assert one["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX AF_NETLINK"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict"
    # R21: room for the agent's fds with 2,000 targets, all exec (limits.py), an OOM kill of a
    # probe or the agent does not stop the unit, and no ExecStop: stop sends nothing by itself.
    assert int(one["LimitNOFILE"]) >= limits.BASE_FDS + limits.PER_TARGET["exec"] * 2000
    assert int(one["TasksMax"]) >= 2 * 2000 and "MemoryMax" in one
    assert one["OOMPolicy"] == "continue" and "OOMScoreAdjust" not in one  # it would be ExaBGP's
    assert "ExecStop" not in one
    vip = {k: v[-1] for k, v in directives(DROPIN).items()}
    assert vip["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert vip["AmbientCapabilities"] == "CAP_NET_ADMIN"
    drain = {k: v[-1] for k, v in directives(DRAIN_ON_STOP).items()}
    assert drain["ExecStop"] == (
        "/usr/bin/anycast-agent drain --all --wait --on-stop --config /etc/anycast-agent/agent.yaml"
    )
    # The default grace, then the withdraw and its ack, with room (docs/deploy.md).
    assert int(drain["TimeoutStopSec"].rstrip("s")) >= Defaults().drain_grace + 30


# -- the watchdog contract with the real agent (needs the agent's notify integration) ------------


def dry_run_config(work: Path, argv: list[str], interval_s: float = 0.2) -> Path:
    config: dict[str, Any] = {
        "pop": "lab",
        "state_dir": str(work / "state"),
        "bgp": {
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "hold_time": "3s",
            "neighbors": [
                {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000}
            ],
        },
        "defaults": {"interval": interval_s, "timeout": interval_s / 2, "rise": 1, "fall": 1},
        "services": [
            {
                "name": "web",
                "prefixes": [WEB],
                "targets": [{"name": "edge1", "exec": {"argv": argv}}],
            }
        ],
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class NotifyListener:
    """What systemd is to the agent: a bound datagram socket; records (time, line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.seen: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        with contextlib.suppress(TimeoutError):
            while True:
                data = self.sock.recv(4096)
                now = time.monotonic()
                self.seen += [(now, line) for line in data.decode().splitlines()]
        return self.seen

    def lines(self, line: str) -> list[float]:
        return [t for t, seen in self.poll() if seen == line]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    n = NotifyListener(tmp_path / "notify.sock")
    yield n
    n.close()


def start_agent(
    config: Path, env: dict[str, str], log: Path, argv_prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                *argv_prefix,
                sys.executable,
                "-m",
                "anycast_agent",
                "run",
                "--config",
                str(config),
                "--dry-run",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_watchdog_pings_only_while_deciding(tmp_path: Path, listener: NotifyListener) -> None:
    """READY=1 once; WATCHDOG=1 every WATCHDOG_USEC/2; none once the decision step is stalled
    through the fault hook (SIGSTOP would stop the pinger too and prove nothing). WATCHDOG_PID
    names another process, as under the unit (it is ExaBGP's PID)."""
    watchdog_s = 1.0
    stall = tmp_path / "stall"
    config = dry_run_config(tmp_path, ["/bin/true"])
    log = tmp_path / "agent.stderr"
    proc = start_agent(
        config,
        {
            "NOTIFY_SOCKET": str(listener.path),
            "WATCHDOG_USEC": str(int(watchdog_s * 1_000_000)),
            "WATCHDOG_PID": str(os.getppid()),
            FAULT_ENV: str(stall),
        },
        log,
    )
    try:
        wait_for(
            lambda: len(listener.lines("WATCHDOG=1")),
            lambda n: n >= 6,
            timeout_s=15,
            what=f"six WATCHDOG=1 (agent log: {log})",
        )
        assert len(listener.lines("READY=1")) == 1
        pings = listener.lines("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings[-5:])]
        print(
            f"\nwatchdog {watchdog_s}s: ping gaps {', '.join(f'{g:.3f}' for g in gaps)}s "
            f"(expected {watchdog_s / 2:.3f}s)"
        )
        assert all(0.8 * watchdog_s / 2 < g < 1.5 * watchdog_s / 2 for g in gaps), gaps
        stall.touch()
        stalled = time.monotonic()
        # Progress stops being recorded; within the stall limit (one watchdog period, plus one
        # ping interval) the pings stop for good.
        quiet_from = stalled + watchdog_s + watchdog_s / 2 + 0.2
        # The listener stamps a datagram when it reads it: keep reading while waiting, so a
        # ping sent before quiet_from is not stamped after it.
        wait_for(
            lambda: (listener.lines("WATCHDOG=1"), time.monotonic())[1],
            lambda now: now >= quiet_from,
            timeout_s=5,
            interval_s=0.02,
        )
        assert_holds(
            lambda: [t for t in listener.lines("WATCHDOG=1") if t >= quiet_from],
            lambda late: not late,
            duration_s=3 * watchdog_s,
            what="no WATCHDOG=1 while decisions are stalled",
        )
        last = max(listener.lines("WATCHDOG=1"))
        print(f"stall -> last ping after {last - stalled:.2f}s (limit {watchdog_s}s)")
        assert proc.poll() is None, "the agent itself keeps running: systemd does the killing"
        assert len(listener.lines("READY=1")) == 1
    finally:
        stop(proc)


# -- exec probes: no capabilities, no systemd variables -----------------------------------------

PROBE = """#!/bin/sh
{{ env; grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status; }} > {out}.tmp && mv {out}.tmp {out}
"""


def test_exec_probe_gets_no_caps_and_no_notify_socket(
    tmp_path: Path, listener: NotifyListener
) -> None:
    """The agent runs like a non-root unit user with AmbientCapabilities=CAP_NET_ADMIN
    (securebits noroot: uid 0 gains nothing on exec but the ambient set), with the unit's
    systemd variables; the check command reports its environment and capabilities."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root and setpriv (util-linux): CI must provide both")
        pytest.skip("needs root and setpriv (util-linux)")
    report = tmp_path / "probe.report"
    probe = tmp_path / "probe.sh"
    probe.write_text(PROBE.format(out=report))
    probe.chmod(0o755)
    config = dry_run_config(tmp_path, [str(probe)])
    proc = start_agent(
        config,
        {
            "NOTIFY_SOCKET": str(listener.path),
            "WATCHDOG_USEC": "5000000",
            "WATCHDOG_PID": "1",
            "LISTEN_FDS": "1",
        },
        tmp_path / "agent.stderr",
        argv_prefix=(
            setpriv,
            "--securebits",
            "+noroot,+noroot_locked",
            "--inh-caps",
            "-all,+net_admin",
            "--ambient-caps",
            "-all,+net_admin",
            "--",
        ),
    )
    try:
        wait_for(report.exists, timeout_s=15, what=f"probe report ({tmp_path / 'agent.stderr'})")
        agent_caps = Path(f"/proc/{proc.pid}/status").read_text()
        assert int(re.search(r"CapAmb:\s*(\w+)", agent_caps)[1], 16) == NET_ADMIN  # type: ignore[index]
        text = report.read_text()
        env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        caps = dict(
            (k, int(v.strip(), 16)) for k, v in re.findall(r"^(Cap\w+):\s*(\w+)$", text, re.M)
        )
        print(f"\nexec probe: {caps}, systemd vars: {sorted(k for k in env if 'WATCHDOG' in k)}")
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"):
            assert var not in env, var
        assert caps == {"CapPrm": 0, "CapEff": 0, "CapAmb": 0}, caps
    finally:
        stop(proc)


# -- agent upgrade without a withdraw: SIGUSR2 to ExaBGP ---------------------------------------


def test_sigusr2_restarts_the_agent_and_keeps_the_routes(
    pop_lab_factory: PopLabFactory, exabgp_version: ExabgpVersion
) -> None:
    """`systemctl kill -s SIGUSR2 --kill-whom=main exabgp-anycast`: ExaBGP restarts its API
    processes (the new agent binary) and keeps its routes; BIRD receives no UPDATE."""
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    agent = AgentLab(lab, [ServiceSpec("web", [WEB], edges=[0])])
    agent.start()
    lab.bird.wait_route(WEB, timeout_s=15)
    agent.wait_log("announce 192.0.2.10/32")
    before = lab.bird.import_counters(SESSION)
    old = agent.agent_pid(timeout_s=10)
    mark = len(agent.log())
    signalled = time.monotonic()
    agent.exa.send_signal(signal.SIGUSR2)
    new_seen: list[float] = []

    def route_while_watching_pids() -> list[object]:
        pids = agent.agent_pids()
        if not new_seen and pids and old not in pids:
            new_seen.append(time.monotonic())
        return list(lab.bird.route(WEB))

    # The route never leaves BIRD while the agent is replaced.
    assert_holds(route_while_watching_pids, duration_s=2.0, what=f"{WEB} at BIRD during restart")
    wait_for(
        agent.agent_pids,
        lambda pids: bool(pids) and old not in pids,
        timeout_s=10,
        what="a new agent process after SIGUSR2",
    )
    restarted_s = (new_seen[0] if new_seen else time.monotonic()) - signalled
    after_start = agent.wait_log("ExaBGP holds 1 routes", after=mark, timeout_s=10)
    agent.wait_log("service web unknown -> up", after=after_start)
    wait_for(time.monotonic, lambda now: now > signalled + 5 * INTERVAL_S, timeout_s=5)
    after = lab.bird.import_counters(SESSION)
    print(
        f"\n[exabgp {exabgp_version}] SIGUSR2: new agent after {restarted_s * 1000:.0f} ms; "
        f"BIRD updates received/ignored/accepted {before.updates_received}/"
        f"{before.updates_ignored}/{before.updates_accepted} -> {after.updates_received}/"
        f"{after.updates_ignored}/{after.updates_accepted}, withdraws "
        f"{before.withdraws_received} -> {after.withdraws_received}"
    )
    assert lab.bird.route(WEB) and lab.bird.protocol_state(SESSION) == "Established"
    assert agent.exa.running
    # The new agent adopted the held route and sent nothing.
    assert "announce" not in agent.log()[after_start:]
    assert after.withdraws_received == before.withdraws_received
    assert after.updates_accepted == before.updates_accepted  # the route was never replaced
    if exabgp_version == "5.0":
        assert after == before  # not a single UPDATE
    else:
        # 4.2 re-sends its RIB on SIGUSR2: one identical UPDATE, which BIRD ignores.
        extra = after.updates_received - before.updates_received
        assert extra <= 1 and after.updates_ignored - before.updates_ignored == extra, (
            before,
            after,
        )
