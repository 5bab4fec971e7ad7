"""Pytest fixtures for lab tests; load with `pytest_plugins = ["tests.lab.fixtures"]`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.exabgp import EXABGP_VERSIONS, ExabgpVersion
from tests.lab.prereqs import require_lab
from tests.lab.topology import PopLab, PopLabFactory

__all__ = ["exabgp_version", "pop_lab", "pop_lab_factory", "require_lab"]


@pytest.fixture
def pop_lab_factory(request: pytest.FixtureRequest) -> Iterator[PopLabFactory]:
    """`make(**PopLab kwargs)` builds a lab; every lab is torn down after the test, and
    its work dir is kept (and its log tails printed) when the test failed."""
    labs: list[PopLab] = []
    failed_before = request.session.testsfailed

    def make(**kwargs: Any) -> PopLab:
        require_lab(kwargs.get("exabgp_version", "5.0"))
        lab = PopLab(**kwargs)
        labs.append(lab)
        lab.build()
        return lab

    yield make
    # The call phase's report is logged before teardown runs, so a failed test already counts.
    failed = request.session.testsfailed > failed_before
    errors = []
    for lab in reversed(labs):
        try:
            note = lab.close(failed=failed)
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        if note:
            sys.stderr.write(note + "\n")
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)


@pytest.fixture(params=EXABGP_VERSIONS, ids=lambda v: f"exabgp{v}")
def exabgp_version(request: pytest.FixtureRequest) -> ExabgpVersion:
    """Every ExaBGP-facing test runs against both versions; parametrize to narrow it."""
    version: ExabgpVersion = request.param
    return version


@pytest.fixture
def pop_lab(pop_lab_factory: PopLabFactory, exabgp_version: ExabgpVersion) -> PopLab:
    """A one-link lab with BIRD up (ExaBGP not started yet: the test picks its API process)."""
    return pop_lab_factory(exabgp_version=exabgp_version)
