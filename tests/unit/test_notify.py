"""sd_notify client against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycast_agent.notify import Notifier, Watchdog


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


async def recv(sock: socket.socket, timeout_s: float = 2.0) -> str:
    async with asyncio.timeout(timeout_s):
        return (await asyncio.get_running_loop().sock_recv(sock, 4096)).decode()


async def nothing_within(sock: socket.socket, duration_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        got = await recv(sock, duration_s)
        raise AssertionError(f"expected silence, received {got!r}")


def test_disabled_without_notify_socket() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog is None
    assert n.ready() is False and n.ping() is False


def test_watchdog_interval_is_half_the_timeout_and_watchdog_pid_is_ignored() -> None:
    # WATCHDOG_PID names ExaBGP (the unit's main PID), never us: the watchdog stays on.
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    n = Notifier.from_env(env)
    assert n.watchdog == Watchdog(timeout_s=3.0, interval_s=1.5, stall_after_s=3.0)
    assert os.getpid() != 1
    n2 = Notifier.from_env(env, stall_after_s=7.5)
    assert n2.watchdog is not None and n2.watchdog.stall_after_s == 7.5


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_watchdog_without_a_positive_timeout(usec: str) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec})
    assert n.enabled and n.watchdog is None


def test_relative_socket_path_is_refused() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "run/x"}).enabled


async def test_ready_status_stopping_reach_the_socket(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready()
    assert await recv(sock) == "READY=1"
    assert n.status("web up\n  api  down")
    assert await recv(sock) == "STATUS=web up api down"
    assert n.stopping()
    assert await recv(sock) == "STOPPING=1"
    n.close()


async def test_abstract_socket() -> None:
    name = f"anycast-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
    try:
        assert n.ready()
        assert await recv(sock) == "READY=1"
    finally:
        n.close()
        sock.close()


def test_a_vanished_manager_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    n.close()


def test_newline_in_an_assignment_is_refused(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "x.sock")})
    with pytest.raises(ValueError, match="newline"):
        n.notify("STATUS=a\nREADY=1")


async def test_watchdog_loop_without_watchdog_returns_at_once(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    async with asyncio.timeout(1):
        await n.watchdog_loop(lambda: 0.0)
    await nothing_within(sock, 0.05)


async def test_pings_at_the_cadence_while_progressing(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # 50 ms cadence
    task = asyncio.create_task(n.watchdog_loop(time.monotonic))
    try:
        stamps = []
        for _ in range(6):
            assert await recv(sock) == "WATCHDOG=1"
            stamps.append(time.monotonic())
    finally:
        task.cancel()
        n.close()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.035 < g < 0.1 for g in gaps), gaps


async def test_stalled_progress_stops_the_pings_and_resumes(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    now = [1000.0]
    last_progress = [1000.0]
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}, stall_after_s=5.0
    )  # 20 ms cadence
    task = asyncio.create_task(n.watchdog_loop(lambda: last_progress[0], clock=lambda: now[0]))
    try:
        assert await recv(sock) == "WATCHDOG=1"
        now[0] = 1004.9  # progress 4.9 s old: still within the limit
        await recv(sock)
        now[0] = 1005.0  # exactly at the limit: stalled
        with contextlib.suppress(TimeoutError):  # one ping may already be in flight
            await recv(sock, 0.05)
        await nothing_within(sock, 0.2)  # ten intervals, no ping
        last_progress[0] = 1004.0
        assert await recv(sock) == "WATCHDOG=1"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    n.close()
