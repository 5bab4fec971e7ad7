"""The collector's settings the agent makes: the young threshold, and what it freezes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from anycast_agent import heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_settling_freezes_what_lives_and_raises_the_young_threshold() -> None:
    kept = [object() for _ in range(10)]
    heap.settle_heap()
    assert gc.get_freeze_count() > len(kept)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
