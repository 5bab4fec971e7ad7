"""The open-file budget checked at start: a warning and two gauges, never an exit (R21)."""

from __future__ import annotations

import logging
import resource

import pytest

from anycast_agent import limits
from tests.unit.builders import make_config


def test_a_short_limit_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()  # two tcp targets
    monkeypatch.setattr(resource, "getrlimit", lambda _: (40, 4096))
    with caplog.at_level(logging.WARNING):
        assert limits.fd_budget(config) == (40, limits.BASE_FDS + 2)
    assert "open-file limit 40 is below the 66 this config may need" in caplog.text


def test_an_ample_limit_is_quiet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (65536, 65536))
    with caplog.at_level(logging.WARNING):
        assert limits.fd_budget(make_config()) == (65536, 66)
    assert caplog.text == ""
