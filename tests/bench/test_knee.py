"""The knee search, driven by a fake step: which N it tries, what it reports, and its bounds."""

from __future__ import annotations

from typing import Any

from bench.knee import KneePlan, search, verdict


def machine(knee: int) -> tuple[list[int], Any]:
    """A fake step that holds up to `knee` targets, and the N it was asked for."""
    asked: list[int] = []

    def measure(n: int) -> dict[str, Any]:
        asked.append(n)
        late = 10.0 if n <= knee else 80.0
        return {"jitter_p99_ms": late, "missed_slots": 0, "failed": 0}

    return asked, measure


PLAN = KneePlan(python="python3", start=2000, ceiling=8000, growth=1.5, resolution=0.1,
                max_runs=10)  # fmt: skip


def test_grows_then_halves_the_gap_until_within_the_resolution() -> None:
    asked, measure = machine(3700)
    found = search(measure, PLAN)
    assert asked[:3] == [2000, 3000, 4500]
    assert found["knee"] is not None and found["first_failing"] is not None
    assert found["knee"] <= 3700 < found["first_failing"] <= found["knee"] * 1.1
    assert found["ended_by"] == "resolution"
    assert [s["holds"] for s in found["steps"]] == [n <= 3700 for n in asked]


def test_stops_at_the_ceiling_when_everything_holds() -> None:
    asked, measure = machine(10**6)
    found = search(measure, PLAN)
    assert asked == [2000, 3000, 4500, 6800, 8000]
    assert found == found | {"knee": 8000, "first_failing": None, "ended_by": "ceiling"}


def test_looks_below_the_start_when_it_fails() -> None:
    asked, measure = machine(700)
    found = search(measure, PLAN)
    assert asked[:3] == [2000, 1000, 500]
    assert found["knee"] is not None and found["knee"] <= 700 < found["first_failing"]


def test_never_more_steps_than_max_runs() -> None:
    asked, measure = machine(3333)
    found = search(measure, KneePlan(python="python3", max_runs=3))
    assert len(asked) == 3 and found["ended_by"] == "max_runs"


def test_a_missed_slot_or_a_failed_probe_fails_a_step() -> None:
    assert verdict({"jitter_p99_ms": 5.0, "missed_slots": 0, "failed": 0}) == ""
    assert "missed" in verdict({"jitter_p99_ms": 5.0, "missed_slots": 2, "failed": 0})
    assert "failed" in verdict({"jitter_p99_ms": 5.0, "missed_slots": 0, "failed": 1})
    assert "jitter" in verdict({"jitter_p99_ms": 50.0, "missed_slots": 0, "failed": 0})
