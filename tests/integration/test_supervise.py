"""`anycast-agent supervise`: the watchdog that kills ExaBGP when the agent stops pinging.

The first tests run the supervisor over a small fake ExaBGP (a parent that starts a notifying
helper in its own process group, as ExaBGP does); the last one runs the real ExaBGP and agent
in the netns lab and shows a stalled agent ending in a withdraw at BIRD.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.agent_lab import ServiceSpec, agent_config
from tests.lab.exabgp import ExabgpVersion, exabgp_binary, exabgp_env
from tests.lab.processes import terminate
from tests.lab.topology import PopLabFactory
from tests.lab.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
SUPERVISE = [sys.executable, "-m", "anycast_agent.supervise"]
EXIT_WATCHDOG = 70
WEB = "192.0.2.10/32"
SESSION = "pop0_v4"

# A stand-in for ExaBGP: it starts the "agent" in a new process group (ExaBGP's setpgrp) and
# waits for it. The agent notifies READY=1, then pings through the real Notifier while
# `stall` does not exist, and records its PID and environment.
FAKE_EXABGP = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    agent = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[2:]], preexec_fn=os.setpgrp)
    stopping = []
    def stop(signum, frame):
        stopping.append(signum)
        agent.terminate()
    signal.signal(signal.SIGTERM, stop)
    code = agent.wait()
    sys.exit(0 if stopping else code)
    """
)
FAKE_AGENT = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pathlib import Path
    from anycast_agent.notify import Notifier
    work = Path(sys.argv[1])
    (work / "agent.pid").write_text(str(os.getpid()))
    (work / "agent.env").write_text(json.dumps(dict(os.environ)))
    if sys.argv[2:] == ["exit3"]:
        sys.exit(3)
    n = Notifier.from_env(os.environ)
    last = [time.monotonic()]
    def progress():
        if not (work / "stall").exists():
            last[0] = time.monotonic()
        return last[0]
    async def main():
        if sys.argv[2:] != ["never-ready"]:
            n.ready()
        await n.watchdog_loop(progress)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    """
)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    (tmp_path / "exabgp.py").write_text(FAKE_EXABGP)
    (tmp_path / "agent.py").write_text(FAKE_AGENT)
    started: list[subprocess.Popen[bytes]] = []
    yield tmp_path, started
    for proc in started:
        terminate(proc)
    pid_file = tmp_path / "agent.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def supervise(
    work: Path, started: list[subprocess.Popen[bytes]], *opts: str, agent_args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WATCHDOG_PID": "1"}
    with (work / "supervise.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                *SUPERVISE,
                *opts,
                "--",
                sys.executable,
                str(work / "exabgp.py"),
                str(work / "agent.py"),
                str(work),
                *agent_args,
            ],
            env=env,
            stderr=log,
        )
    started.append(proc)
    return proc


def agent_pid(work: Path) -> int:
    wait_for((work / "agent.pid").exists, timeout_s=10, what="fake agent started")
    return int((work / "agent.pid").read_text())


def test_child_gets_notify_socket_and_watchdog_usec(
    fake: tuple[Path, list[subprocess.Popen[bytes]]],
) -> None:
    work, started = fake
    proc = supervise(work, started, "--watchdog-sec", "1.5")
    agent_pid(work)
    wait_for((work / "agent.env").exists, timeout_s=5)
    env = json.loads((work / "agent.env").read_text())
    assert env["WATCHDOG_USEC"] == "1500000"
    assert env["NOTIFY_SOCKET"].startswith("/")
    assert "WATCHDOG_PID" not in env
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_stalled_agent_gets_the_whole_tree_killed(
    fake: tuple[Path, list[subprocess.Popen[bytes]]],
) -> None:
    work, started = fake
    watchdog_s = 1.0
    proc = supervise(work, started, "--watchdog-sec", str(watchdog_s))
    pid = agent_pid(work)
    wait_for(
        (work / "supervise.log").read_text,
        lambda t: "supervise: READY=1 received" in t,
        timeout_s=10,
    )
    # Healthy for several watchdog periods: the pings keep it alive.
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=3 * watchdog_s)
    stalled = time.monotonic()
    (work / "stall").touch()
    assert proc.wait(timeout=10) == EXIT_WATCHDOG
    elapsed = time.monotonic() - stalled
    print(f"\nstall -> supervisor kill: {elapsed:.2f}s (watchdog {watchdog_s}s, bound 2x)")
    # stall_after = timeout: the last ping comes < 1 timeout after the stall, the kill one later.
    assert elapsed < 2 * watchdog_s + 0.5
    assert not alive(pid), "the agent in its own process group must be killed too"
    assert "no WATCHDOG=1 within 1.0s" in (work / "supervise.log").read_text()


def test_no_ready_within_start_timeout(
    fake: tuple[Path, list[subprocess.Popen[bytes]]],
) -> None:
    work, started = fake
    proc = supervise(
        work,
        started,
        "--watchdog-sec",
        "5",
        "--start-timeout-sec",
        "1",
        agent_args=("never-ready",),
    )
    pid = agent_pid(work)
    assert proc.wait(timeout=10) == EXIT_WATCHDOG
    assert not alive(pid)
    assert "no READY=1 within 1.0s" in (work / "supervise.log").read_text()


def test_child_exit_status_is_passed_on(fake: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    work, started = fake
    proc = supervise(work, started, "--watchdog-sec", "5", agent_args=("exit3",))
    assert proc.wait(timeout=10) == 3


def test_sighup_is_not_forwarded(fake: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    work, started = fake
    proc = supervise(work, started, "--watchdog-sec", "5")
    agent_pid(work)
    wait_for(
        (work / "supervise.log").read_text,
        lambda t: "supervise: READY=1 received" in t,
        timeout_s=10,
    )
    proc.send_signal(signal.SIGHUP)
    wait_for((work / "supervise.log").read_text, lambda t: "SIGHUP ignored" in t, timeout_s=5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_usage_errors() -> None:
    out = subprocess.run([*SUPERVISE, "--watchdog-sec", "1"], capture_output=True, check=False)
    assert out.returncode == 2 and b"a command to run is required" in out.stderr
    out = subprocess.run(
        [*SUPERVISE, "--watchdog-sec", "0", "--", "true"], capture_output=True, check=False
    )
    assert out.returncode == 2 and b"must be positive" in out.stderr


def test_stalled_agent_under_supervisor_is_withdrawn_at_bird(
    pop_lab_factory: PopLabFactory, exabgp_version: ExabgpVersion
) -> None:
    """ExaBGP under the supervisor runs the real agent; the documented fault hook
    (ANYCAST_AGENT_FAULT_STALL_DECIDE_FILE) stalls its decision step; the supervisor kills
    ExaBGP and BIRD loses the session and the route."""
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    lab.start_edge(0)
    config = lab.workdir / "agent.yaml"
    config.write_text(
        yaml.safe_dump(agent_config(lab, [ServiceSpec("web", [WEB], edges=[0])]), sort_keys=False)
    )
    conf = lab.workdir / "exabgp-agent.conf"
    conf.write_text(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "anycast_agent",
                "render",
                "exabgp",
                "--config",
                str(config),
                "--agent",
                f"{sys.executable} -m anycast_agent",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
    )
    stall = lab.workdir / "stall"
    watchdog_s = 2.0
    log_path = lab.workdir / "supervised.stderr"
    supervisor = lab.pop.popen(
        [
            *SUPERVISE,
            "--watchdog-sec",
            str(watchdog_s),
            "--",
            str(exabgp_binary(exabgp_version)),
            str(conf),
        ],
        env=exabgp_env(
            {"PYTHONPATH": str(REPO), "ANYCAST_AGENT_FAULT_STALL_DECIDE_FILE": str(stall)}
        ),
        stdout_path=lab.workdir / "supervised.stdout",
        stderr_path=log_path,
        cwd=lab.workdir,
    )
    lab.bird.wait_route(WEB, timeout_s=15)
    wait_for(
        log_path.read_text,
        lambda t: "supervise: READY=1 received" in t,
        timeout_s=10,
        what="READY=1",
    )
    # Pings keep ExaBGP alive across several watchdog periods.
    with pytest.raises(subprocess.TimeoutExpired):
        supervisor.wait(timeout=2 * watchdog_s)
    assert lab.bird.route(WEB)
    stalled = time.monotonic()
    stall.touch()
    code = supervisor.wait(timeout=4 * watchdog_s + 5)
    killed_s = time.monotonic() - stalled
    lab.bird.wait_route(WEB, present=False, timeout_s=5)
    withdrawn_s = time.monotonic() - stalled
    print(
        f"\n[exabgp {exabgp_version}] decisions stalled -> supervisor killed ExaBGP after "
        f"{killed_s:.2f}s -> {WEB} gone at BIRD after {withdrawn_s:.2f}s (watchdog {watchdog_s}s)"
    )
    assert code == EXIT_WATCHDOG
    assert lab.bird.protocol_state(SESSION) != "Established"
    left = [p for p in lab.pop.pids() if b"anycast_agent" in cmdline(p)]
    assert not left, f"agent processes outlived the kill: {left}"
    assert "no WATCHDOG=1 within" in log_path.read_text()
