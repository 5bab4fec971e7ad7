"""The interpreter's settings the agent makes: the collector's young threshold and freeze, and
the GIL's switch interval."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from anycast_agent import heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restored")
def test_settling_freezes_what_lives_and_raises_the_young_threshold() -> None:
    kept = [object() for _ in range(10)]
    heap.settle_heap()
    assert gc.get_freeze_count() > len(kept)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD


@pytest.mark.usefixtures("restored")
def test_a_worker_thread_hands_the_gil_back_within_the_interval() -> None:
    heap.share_the_gil()
    assert sys.getswitchinterval() == pytest.approx(heap.SWITCH_INTERVAL_S)
