"""The state file: atomic writes, the previous copy, and the unreadable-state rule (DESIGN §7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anycast_agent.core.intents import POP, Drain, Intents, MedOverride
from anycast_agent.store import Store, Unreadable, decode, encode

INTENTS = Intents(
    drains={POP: Drain(POP, "maintenance", "op", since=1.0, expires=99.0)},
    meds={"web": MedOverride("web", 500, "rebalance", "op", since=2.0)},
    ramp_holds=frozenset({"web"}),
)


def test_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.load() == Intents()  # first boot: no file, no intents
    store.save(INTENTS)
    assert Store(tmp_path).load() == INTENTS
    assert decode(encode(INTENTS)) == INTENTS


def test_a_break_glass_drain_round_trips_and_older_files_read_as_without_it() -> None:
    drained = Intents(drains={"web": Drain("web", "black hole", "op", 1.0, None, True)})
    assert decode(encode(drained)) == drained
    old = (
        b'{"format": 1, "drains": [{"service": "web", "reason": "r", "author": "a", '
        b'"since": 1.0, "expires": null}]}'
    )
    assert decode(old).drains["web"].override_fleet is False


def test_every_save_writes_both_copies_alike(tmp_path: Path) -> None:
    # The first save too: one unreadable state.json must never be all there is.
    store = Store(tmp_path)
    store.save(INTENTS)
    assert (tmp_path / "state.json").read_bytes() == (tmp_path / "state.json.prev").read_bytes()
    assert decode((tmp_path / "state.json.prev").read_bytes()) == INTENTS
    assert not list(tmp_path.glob(".state.json*"))  # no temp file left behind


def test_the_copy_stands_in_for_a_corrupt_current_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(INTENTS)
    (tmp_path / "state.json").write_text("{ truncated")
    assert store.load() == INTENTS


def test_both_unreadable_raises(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{ truncated")
    (tmp_path / "state.json.prev").write_bytes(b"\x00\xff")
    with pytest.raises(Unreadable, match=r"state\.json"):
        Store(tmp_path).load()


@pytest.mark.parametrize(
    "drain",
    [
        {"service": "web", "reason": "r", "author": "a", "since": "2024-01-01", "expires": None},
        {"service": "web", "reason": "r", "author": "a", "since": 1.0},
        {"service": 5, "reason": "r", "author": "a", "since": 1.0, "expires": None},
    ],
)
def test_wrong_types_are_unreadable_not_a_crash_later(
    tmp_path: Path, drain: dict[str, object]
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "drains": [drain]}))
    with pytest.raises(Unreadable):
        Store(tmp_path).load()


def test_the_copy_stands_in_for_a_deleted_current_file(tmp_path: Path) -> None:
    # A deleted state.json is not "no intents" while its copy holds a drain (R29, R30).
    store = Store(tmp_path)
    store.save(INTENTS)
    (tmp_path / "state.json").unlink()
    assert store.load() == INTENTS


def test_only_corrupt_current_and_no_previous_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"format": 99}')
    with pytest.raises(Unreadable, match="format"):
        Store(tmp_path).load()


@pytest.mark.parametrize(
    "text",
    [
        '{"format": 1, "drains": [{"service": "web", "reason": "r", "author": "a", '
        '"since": NaN, "expires": null}]}',
        '{"format": 1, "drains": [{"service": "web", "reason": "r", "author": "a", '
        '"since": 1.0, "expires": Infinity}]}',
        '{"format": 1, "drains": "web"}',
        '{"format": 1, "drains": [{"service": "web", "reason": "r", "author": "a", '
        '"since": 1.0, "expires": null, "override_fleet": "yes"}]}',
        '{"format": 1, "drains": [{"service": "web", "reason": "r", "author": "a", '
        '"since": 1.0, "expires": null, "override_fleet": 1}]}',
        '{"format": 1, "ramp_holds": "web"}',
        '{"format": 1, "drains": [], "colour": "red"}',
        '{"format": 2}',
    ],
    ids=[
        "nan",
        "infinity",
        "string-for-list",
        "string-override",
        "int-override",
        "string-for-holds",
        "unknown-key",
        "future",
    ],
)
def test_values_of_the_wrong_kind_make_a_copy_unreadable(tmp_path: Path, text: str) -> None:
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(Unreadable):
        Store(tmp_path).load()
    with pytest.raises(ValueError):
        decode(text.encode())


def test_a_copy_nested_too_deeply_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    # json.loads raises RecursionError, not ValueError (seen while fuzzing the config loader).
    (tmp_path / "state.json").write_text('{"format": 1, "drains": ' + "[" * 100_000)
    with pytest.raises(Unreadable):
        Store(tmp_path).load()
