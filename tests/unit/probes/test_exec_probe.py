"""Exec probe: real processes, their exit status, their process group, their environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anycast_agent.config import ExecCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.exec import SYSTEMD_VARS, ambient_caps_prefix
from tests.unit.probes.conftest import eventually


async def run(factory: ProbeFactory, *argv: str, timeout_s: float = 2.0) -> ProbeResult:
    return await factory.build(ExecCheck(argv=argv), timeout_s).check()


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie is dead (our container's init may be slow to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pids_in(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def read_pids(path: Path, count: int) -> list[int]:
    await eventually(lambda: len(pids_in(path)) >= count)
    return pids_in(path)[:count]


async def test_exit_zero_is_ok(factory: ProbeFactory) -> None:
    result = await run(factory, "/bin/true")
    assert result.ok, result.reason
    assert 0 < result.latency_s < 2.0


async def test_non_zero_exit_names_the_status(factory: ProbeFactory) -> None:
    result = await run(factory, "/bin/false")
    assert not result.ok
    assert result.reason == "/bin/false exit status 1"


async def test_reason_carries_the_last_stderr_line(factory: ProbeFactory) -> None:
    script = "echo starting >&2; echo 'backend pool empty' >&2; echo noise; exit 3"
    result = await run(factory, "/bin/sh", "-c", script)
    assert result.reason == "/bin/sh exit status 3: backend pool empty"


async def test_large_stderr_neither_blocks_nor_grows_the_reason(factory: ProbeFactory) -> None:
    script = "head -c 300000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last words >&2; exit 2"
    result = await run(factory, "/bin/sh", "-c", script)
    assert result.reason == "/bin/sh exit status 2: last words"


async def test_killed_by_a_signal(factory: ProbeFactory) -> None:
    result = await run(factory, "/bin/sh", "-c", "kill -TERM $$")
    assert result.reason == "/bin/sh killed by SIGTERM"


async def test_missing_program(factory: ProbeFactory, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-check")
    result = await run(factory, missing)
    assert not result.ok
    assert result.reason == f"cannot run {missing!r}: No such file or directory"


async def test_timeout_kills_the_whole_process_group(factory: ProbeFactory, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids_file}; sleep 30 & echo $! >> {pids_file}; wait"
    started = time.monotonic()
    result = await run(factory, "/bin/sh", "-c", script, timeout_s=0.5)
    elapsed = time.monotonic() - started
    pids = await read_pids(pids_file, 2)
    try:
        assert result.reason == "timeout after 0.5s"
        assert elapsed < 1.0
        await eventually(lambda: not any(alive(p) for p in pids), timeout_s=2)
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


async def test_cancel_kills_the_group_and_propagates(factory: ProbeFactory, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    probe = factory.build(
        ExecCheck(argv=("/bin/sh", "-c", f"sleep 30 & echo $! > {pids_file}; wait")), 30.0
    )
    task = asyncio.create_task(probe.check())
    (pid,) = await read_pids(pids_file, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        await eventually(lambda: not alive(pid), timeout_s=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_environment_has_nothing_from_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SYSTEMD_VARS:
        monkeypatch.setenv(name, "leak")
    monkeypatch.setenv("ANYCAST_TEST_KEEP", "kept")
    out = tmp_path / "env"
    async with ProbeFactory() as factory:
        result = await run(factory, "/bin/sh", "-c", f"env > {out}")
    assert result.ok, result.reason
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["ANYCAST_TEST_KEEP"] == "kept"
    assert sorted(SYSTEMD_VARS & env.keys()) == []
    assert {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} <= SYSTEMD_VARS


def test_no_prefix_without_ambient_capabilities(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapInh:\t0000000000000000\nCapAmb:\t0000000000000000\n")
    assert ambient_caps_prefix(status) == ()


def test_setpriv_prefix_with_ambient_capabilities(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("setpriv (util-linux) is not installed: CI must provide it")
        pytest.skip("setpriv (util-linux) is not installed")
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapAmb:\t0000000000000400\n")
    prefix = ambient_caps_prefix(status)
    assert prefix[1:] == ("--ambient-caps", "-all", "--")


AMBIENT_SCRIPT = """
import asyncio, sys
from anycast_agent.config import ExecCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory

async def main():
    async with ProbeFactory() as f:
        check = ExecCheck(argv=("/bin/sh", "-c", "grep CapAmb /proc/self/status > " + sys.argv[1]))
        result = await f.build(check, 5.0).check()
    assert result.ok, result.reason

asyncio.run(main())
"""


def test_child_does_not_inherit_ambient_capabilities(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        if os.environ.get("CI") == "true":
            pytest.fail("raising an ambient capability needs root and setpriv: CI has both")
        pytest.skip("raising an ambient capability needs root and setpriv")
    out = tmp_path / "child-status"
    agent = [
        setpriv, "--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service",
        sys.executable, "-c",
    ]  # fmt: skip
    own = subprocess.run(
        [*agent, "print(open('/proc/self/status').read())"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "CapAmb:\t0000000000000400" in own.stdout, "could not give the agent an ambient cap"
    subprocess.run([*agent, AMBIENT_SCRIPT, str(out)], check=True, cwd=Path(__file__).parents[3])
    assert out.read_text().split() == ["CapAmb:", "0000000000000000"]
