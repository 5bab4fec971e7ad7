"""The open-file budget checked at start: a warning and two gauges, never an exit; and the OOM
order: the agent raises its own oom_score_adj, never lowers it, never raises an error (R21)."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from anycast_agent import limits
from tests.unit.builders import make_config

REPO = Path(__file__).resolve().parents[2]


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


# -- the OOM order: the agent and its exec probes go before ExaBGP --------------------------------


def test_a_lower_oom_score_adj_is_raised(tmp_path: Path) -> None:
    path = tmp_path / "oom_score_adj"
    path.write_text("0\n")
    assert limits.prefer_oom_kill(500, path=path) is None
    assert path.read_text() == "500\n"


@pytest.mark.parametrize("held", ["500", "800", "1000"])
def test_an_equal_or_higher_oom_score_adj_is_kept(tmp_path: Path, held: str) -> None:
    path = tmp_path / "oom_score_adj"
    path.write_text(f"{held}\n")
    assert limits.prefer_oom_kill(500, path=path) is None
    assert path.read_text() == f"{held}\n"  # not even rewritten


@pytest.mark.parametrize("content", [None, "", "not a number\n"])
def test_an_unusable_oom_score_adj_is_an_error_string(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "oom_score_adj"
    if content is not None:
        path.write_text(content)
    error = limits.prefer_oom_kill(500, path=path)
    assert error is not None and str(path) in error and "500" in error
    assert content is None or path.read_text() == content  # nothing written


def test_a_directory_is_an_error_string(tmp_path: Path) -> None:
    error = limits.prefer_oom_kill(path=tmp_path)
    assert error is not None and str(tmp_path) in error


@pytest.mark.skipif(not limits.OOM_SCORE_ADJ.exists(), reason="needs Linux /proc")
def test_a_child_raises_its_own_and_its_children_inherit_it() -> None:
    """On the real /proc, in a child process (the test process keeps its own value): the
    child's value is raised and a process it forks, as an exec probe, starts with it."""
    held = int(limits.OOM_SCORE_ADJ.read_text())
    if held >= 1000:
        pytest.skip("this process already has the highest oom_score_adj")
    code = (
        "import subprocess\n"
        "from anycast_agent.limits import prefer_oom_kill\n"
        "print(prefer_oom_kill(1000))\n"
        "print(subprocess.run(['cat', '/proc/self/oom_score_adj'], capture_output=True,"
        " text=True, check=True).stdout.strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert out.stdout.split() == ["None", "1000"], out
    assert int(limits.OOM_SCORE_ADJ.read_text()) == held
