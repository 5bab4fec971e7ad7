"""One writer per PoP (R8): the lock against real processes holding it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycast_agent.writer import LOCK_FILE, LockBusy, own, started_by_exabgp

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def hold(tmp_path: Path, procs: list[subprocess.Popen[str]], seconds: float) -> int:
    """Start another process holding the lock for `seconds`; its PID once it holds it."""
    argv = [sys.executable, "-c", HOLD, str(tmp_path / LOCK_FILE), str(seconds)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc.pid


async def test_the_first_agent_takes_the_lock_writes_its_pid_and_keeps_it_from_exec(
    tmp_path: Path,
) -> None:
    lock = await own(tmp_path, asyncio.Event(), under_exabgp=False)
    assert lock is not None
    try:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # probes never inherit it
        # A second taker in this very process is refused too: the lock is the open file's.
        with pytest.raises(LockBusy):
            await own(tmp_path, asyncio.Event(), under_exabgp=False)
    finally:
        lock.close()


async def test_a_copy_started_by_hand_is_refused_naming_the_holder(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    pid = hold(tmp_path, holders, 30)
    with pytest.raises(LockBusy, match=rf"another anycast-agent \(pid {pid}\) holds .*agent.lock"):
        await own(tmp_path, asyncio.Event(), under_exabgp=False)
    assert holders[0].poll() is None


async def test_under_exabgp_it_waits_for_the_holder_to_exit(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    hold(tmp_path, holders, 0.3)
    lock = await own(tmp_path, asyncio.Event(), under_exabgp=True, kill_after_s=10)
    assert lock is not None
    assert holders[0].wait(1) == 0  # it exited on its own: nobody killed it
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.close()


async def test_a_stuck_holder_of_the_same_exabgp_is_killed_after_the_delay(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    hold(tmp_path, holders, 30)
    started = asyncio.get_running_loop().time()
    lock = await own(
        tmp_path, asyncio.Event(), under_exabgp=True, kill_after_s=0.3, parent=os.getpid()
    )
    assert lock is not None
    assert holders[0].wait(1) == -9
    assert asyncio.get_running_loop().time() - started >= 0.3
    lock.close()


async def test_a_holder_of_another_parent_is_never_killed(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    hold(tmp_path, holders, 30)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.6, stop.set)
    lock = await own(tmp_path, stop, under_exabgp=True, kill_after_s=0.1, parent=os.getppid())
    assert lock is None  # stopped while waiting; the other agent lives on
    assert holders[0].poll() is None


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("exabgp", [], True),  # python3 /usr/bin/exabgp conf
        ("sudo-like", ["--config", "/etc/exabgp/agent.yaml"], False),  # only an argument
    ],
)
def test_started_by_exabgp_reads_the_parents_program(
    tmp_path: Path, script: str, args: list[str], expected: bool
) -> None:
    assert not started_by_exabgp()  # pytest's parent is a shell or a runner
    path = tmp_path / script
    path.write_text("import time\nprint('up', flush=True)\ntime.sleep(5)\n")
    argv = [sys.executable, str(path), *args]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # exec'd by now
        assert started_by_exabgp(proc.pid) is expected
        proc.kill()


async def test_a_missing_state_dir_is_made_and_an_unusable_one_is_an_os_error(
    tmp_path: Path,
) -> None:
    # The agent logs it and runs without the lock (agent._start): never a crash loop.
    lock = await own(tmp_path / "new" / "state", asyncio.Event(), under_exabgp=True)
    assert lock is not None and (tmp_path / "new" / "state" / LOCK_FILE).exists()  # made
    lock.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        await own(tmp_path / "file" / "state", asyncio.Event(), under_exabgp=True)
