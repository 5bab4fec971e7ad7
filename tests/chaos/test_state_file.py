"""Chaos R29, R21: the state file under kill -9, corruption and a full disk. Whatever happens
to the files, an acknowledged intent is never lost, and no route is withdrawn because of them."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anycast_agent.core.intents import POP, Drain, Intents
from anycast_agent.store import Store, Unreadable

KILLS = 1000


def save_until_killed(state_dir: Path, kill_at: int, acks: int) -> None:
    """The forked child: the store's write path alone, SIGKILLing itself at its `kill_at`th
    os.write, os.fsync or os.replace (in the middle of a copy, after a rename before its
    directory is synced, between the two copies: anywhere). Reads the intents (they must
    read), counts one more save in the PoP drain's `since`, saves, and writes the count on
    `acks` once the save returned."""
    calls = 0

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kw)

        return wrapper

    write = os.write
    os.write, os.fsync, os.replace = counted(os.write), counted(os.fsync), counted(os.replace)
    store = Store(state_dir)
    while True:
        k = saves(store.load()) + 1
        store.save(Intents(drains={POP: Drain(POP, "counting saves", "op", since=float(k))}))
        write(acks, f"{k}\n".encode())


def saves(intents: Intents) -> int:
    drain = intents.drains.get(POP)
    return 0 if drain is None else int(drain.since)


def test_kill_9_anywhere_in_the_write_path_never_loses_an_acknowledged_intent(
    tmp_path: Path,
) -> None:
    rng = random.Random(29)
    acked = 0
    points: set[int] = set()
    for _ in range(KILLS):
        # Each save makes ~10 counted calls (two copies: write, fsync, replace, dir fsync):
        # kill points over the first few saves reach every step of each.
        kill_at = rng.randint(1, 40)
        points.add(kill_at)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns
            os.close(read_end)
            try:
                save_until_killed(tmp_path, kill_at, write_end)
            finally:
                os._exit(70)
        os.close(write_end)
        with os.fdopen(read_end) as acks:
            lines = acks.read().split()
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        acked = max([acked, *map(int, lines)])
        loaded = saves(Store(tmp_path).load())  # never Unreadable
        assert loaded >= acked, (kill_at, acked, loaded)
    assert acked > KILLS  # the saves went on across the kills
    print(
        f"\n[R29] {KILLS} kill -9 at {len(points)} points of the write path: {acked} saves "
        "acknowledged, none lost"
    )


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "wrong-schema", "future-version", "directory", "empty"],
)
@pytest.mark.parametrize("which", ["current", "both"])
def test_a_damaged_copy_is_read_around_and_two_are_unreadable(
    tmp_path: Path, damage: str, which: str
) -> None:
    drained = Intents(drains={POP: Drain(POP, "maintenance", "op", since=1.0)})
    store = Store(tmp_path)
    store.save(drained)
    for path in [store.path] + ([store.previous] if which == "both" else []):
        spoil(path, damage)
    if which == "both":
        with pytest.raises(Unreadable):
            store.load()
    else:
        assert store.load() == drained  # the drain is still in force


def spoil(path: Path, damage: str) -> None:
    """Damage one copy the way disks, editors and old or new agents do. (Mode 000 is no
    damage to root, which the agent runs as in the lab: root reads it all the same.)"""
    text = path.read_text()
    path.unlink()
    match damage:
        case "truncated":
            path.write_text(text[: len(text) // 2])
        case "garbage":
            path.write_bytes(b"\x00\xff\xfe not json at all")
        case "wrong-schema":
            path.write_text('{"format": 1, "drains": {"*": "maintenance"}}')
        case "future-version":
            path.write_text('{"format": 2, "drains": []}')
        case "directory":
            path.mkdir()
        case "empty":
            path.write_text("")
