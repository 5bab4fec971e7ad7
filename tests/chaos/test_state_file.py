"""Chaos R29, R21: the state file under kill -9, corruption and a full disk. Whatever happens
to the files, an acknowledged intent is never lost, and no route is withdrawn because of them."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from anycast_agent.core.intents import POP, Drain, Intents
from anycast_agent.store import Store, Unreadable

CHILD = Path(__file__).with_name("store_child.py")
REPO = Path(__file__).resolve().parents[2]
KILLS = 1000


def test_kill_9_anywhere_in_the_write_path_never_loses_an_acknowledged_intent(
    tmp_path: Path,
) -> None:
    rng = random.Random(29)
    acked = 0
    points: set[int] = set()
    for _ in range(KILLS):
        # Each save makes ~12 counted calls (two copies: write, fsync, replace, dir fsync):
        # kill points over the first few saves reach every step of each.
        kill_at = rng.randint(1, 40)
        points.add(kill_at)
        out = subprocess.run(
            [sys.executable, str(CHILD), str(tmp_path), str(kill_at)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
            check=False,
        )
        assert out.returncode == -9, out.stderr
        for line in out.stdout.splitlines():
            acked = max(acked, int(line.split()[1]))
        loaded = Store(tmp_path).load()  # never Unreadable
        assert len(loaded.drains) >= acked, (kill_at, acked, sorted(loaded.drains))
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
