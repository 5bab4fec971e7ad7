"""Transcript tests for the target state machine: results in, states out."""

import pytest

from anycast_agent.core.health import Health, observe
from anycast_agent.model import TargetState


def run(transcript: str, rise: int = 2, fall: int = 3, start: Health | None = None) -> str:
    h = start or Health()
    out = []
    for word in transcript.split():
        h = observe(h, word == "ok", rise=rise, fall=fall)
        out.append(h.state.value)
    return " ".join(out)


@pytest.mark.parametrize(
    ("results", "states"),
    [
        ("ok ok", "unknown healthy"),
        ("fail fail fail", "unknown unknown unhealthy"),
        ("ok fail ok ok", "unknown unknown unknown healthy"),
        ("ok ok fail ok", "unknown healthy suspicious healthy"),
        ("ok ok fail fail fail", "unknown healthy suspicious suspicious unhealthy"),
        (
            "ok ok fail fail fail ok ok",
            "unknown healthy suspicious suspicious unhealthy recovering healthy",
        ),
        (
            "ok ok fail fail fail ok fail ok ok",
            "unknown healthy suspicious suspicious unhealthy "
            "recovering unhealthy recovering healthy",
        ),
        (
            "ok ok fail fail ok fail fail",
            "unknown healthy suspicious suspicious healthy suspicious suspicious",
        ),
    ],
)
def test_transcripts(results: str, states: str) -> None:
    assert run(results) == states


def test_rise_and_fall_of_one_skip_intermediate_states() -> None:
    assert run("ok fail ok", rise=1, fall=1) == "healthy unhealthy healthy"


def test_unknown_never_counts_as_healthy() -> None:
    h = observe(Health(), True, rise=2, fall=3)
    assert h.state is TargetState.UNKNOWN
    assert not h.counts_healthy and not h.decided


def test_suspicious_counts_healthy() -> None:
    h = Health(TargetState.SUSPICIOUS, 0, 1)
    assert h.counts_healthy
