"""Polling with a deadline, so lab tests wait for conditions instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.02


def _truthy(value: object) -> bool:
    return bool(value)


def wait_for(
    observe: Callable[[], T],
    predicate: Callable[[T], bool] = _truthy,
    *,
    timeout_s: float,
    interval_s: float = POLL_INTERVAL_S,
    what: str = "",
) -> float:
    """Poll `observe` until `predicate(value)` holds; return the elapsed seconds.

    An exception from `observe` counts as "not yet" (a daemon whose socket is not up yet),
    and is reported as the last observation if the deadline passes.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last: object = "<never observed>"
    while True:
        try:
            value = observe()
        except Exception as exc:
            last = exc
        else:
            last = value
            if predicate(value):
                return time.monotonic() - start
        if time.monotonic() >= deadline:
            label = f" for {what}" if what else ""
            raise AssertionError(
                f"timed out after {timeout_s:.2f}s waiting{label}; last observed: {last!r}"
            )
        time.sleep(interval_s)


def assert_holds(
    observe: Callable[[], T],
    predicate: Callable[[T], bool] = _truthy,
    *,
    duration_s: float,
    interval_s: float = POLL_INTERVAL_S,
    what: str = "",
) -> None:
    """Poll `observe` for `duration_s` and fail at the first observation violating `predicate`."""
    deadline = time.monotonic() + duration_s
    while True:
        value = observe()
        if not predicate(value):
            label = f" {what}" if what else ""
            raise AssertionError(f"condition{label} broke after all; observed: {value!r}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval_s)
