"""The fuzz targets of `make fuzz` (tests/fuzz), at a small budget: every surface, one seed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fuzz.__main__ import run
from tests.fuzz.surfaces import Surface, surfaces

BUDGET = 300
SEED = 20261204


@pytest.fixture(scope="module")
def all_surfaces() -> Iterator[dict[str, Surface]]:
    logging.disable(logging.CRITICAL)
    try:
        with surfaces() as found:
            yield {s.name: s for s in found}
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", ["control", "config", "exabgp", "http", "dns"])
def test_no_input_crashes_escapes_or_changes_a_route_without_the_credential(
    all_surfaces: dict[str, Surface], name: str
) -> None:
    count, _ = run(all_surfaces[name], BUDGET, SEED)
    assert count >= BUDGET * 0.9  # the budget was spent on generated inputs, not skipped
