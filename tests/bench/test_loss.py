"""The loss bench's arithmetic: how long a prefix was out of the upstream's RIB in a window."""

from __future__ import annotations

import pytest

from bench.loss import withdrawn_seconds
from bench.upstream import RibEvent

P = "203.0.113.1/32"


def ev(at: float, withdrawn: bool) -> RibEvent:
    return RibEvent(at, P, withdrawn)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], 0.0),
        ([ev(5, False)], 0.0),  # announced before the window, never withdrawn
        ([ev(5, False), ev(12, True), ev(13.5, False)], 1.5),
        ([ev(12, True), ev(13, False), ev(15, True), ev(16, False)], 2.0),
        ([ev(12, True)], 8.0),  # still out at the window's end
        ([ev(12, True), ev(12.5, True), ev(14, False)], 2.0),  # a repeated withdraw
        ([ev(5, True), ev(11, False)], 1.0),  # out when the window opened
        ([ev(12, False), ev(13, False)], 0.0),  # MED changes are announces
        ([ev(19, True), ev(25, False)], 1.0),  # back after the window: cut at its end
    ],
)
def test_withdrawn_seconds_within_the_window(events: list[RibEvent], expected: float) -> None:
    assert withdrawn_seconds(events, 10.0, 20.0) == pytest.approx(expected)
