"""The exposition of a fake snapshot, read back with Prometheus' own parsers, and written byte for
byte as prometheus_client's own encoders write the same families."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from anycast_agent.control import metrics
from anycast_agent.control.metrics import TARGET_STATE_CODES, Format
from anycast_agent.control.rendering import Clocks
from anycast_agent.core.snapshot import Snapshot
from anycast_agent.core.traffic import Phase
from anycast_agent.model import FleetMode, TargetState
from tests.unit.control.conftest import make_snapshot, target
from tests.unit.control.test_ops_docs import documented_metrics, exported_names

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(snap: Snapshot, fmt: Format = Format.TEXT, mono: float = 0.0) -> str:
    return metrics.render(snap, fmt).fill(Clocks(mono, 0.0)).decode()


def scrape(snap: Snapshot, now: float = 0.0) -> Samples:
    samples = {}
    for family in text_string_to_metric_families(exposition(snap, mono=now)):
        assert family.name.startswith("anycast_agent_")
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_agent_metrics() -> None:
    s = scrape(make_snapshot(last_progress=10.0), now=12.5)
    assert value(s, "anycast_agent_build_info", version="0.1.0") == 1
    assert value(s, "anycast_agent_starts_total") == 2
    assert value(s, "anycast_agent_last_good_config_in_use") == 0
    assert value(s, "anycast_agent_state_unreadable") == 0
    assert value(s, "anycast_agent_exabgp_channel_up") == 1
    assert value(s, "anycast_agent_ready") == 1
    assert value(s, "anycast_agent_last_progress_age_seconds") == 2.5
    assert value(s, "anycast_agent_neighbor_up", neighbor="198.51.100.1") == 1
    assert value(s, "anycast_agent_neighbor_up", neighbor="198.51.100.3") == 0
    assert value(s, "anycast_agent_commands_sent_total") == 12
    assert value(s, "anycast_agent_commands_acked_total", result="done") == 10
    assert value(s, "anycast_agent_commands_acked_total", result="timeout") == 1


def test_alarm_flags() -> None:
    s = scrape(make_snapshot(last_good_fallback=True, state_unreadable=True, channel_up=False))
    assert value(s, "anycast_agent_last_good_config_in_use") == 1
    assert value(s, "anycast_agent_state_unreadable") == 1
    assert value(s, "anycast_agent_exabgp_channel_up") == 0


def test_target_metrics() -> None:
    s = scrape(make_snapshot())
    key = {"service": "web", "target": "edge3"}
    assert value(s, "anycast_agent_target_state", **key) == 3  # unhealthy
    assert value(s, "anycast_agent_target_state", service="web", target="edge1") == 1
    assert value(s, "anycast_agent_target_state", service="dns", target="ns2") == 0
    assert (
        value(s, "anycast_agent_target_probe_duration_seconds", service="web", target="edge1")
        == 0.012
    )
    assert ("anycast_agent_target_probe_duration_seconds", tuple(sorted(key.items()))) not in s
    assert value(s, "anycast_agent_target_probes_total", result="ok", **key) == 40
    assert value(s, "anycast_agent_target_probes_total", result="failed", **key) == 2
    assert value(s, "anycast_agent_target_skipped_slots_total", **key) == 1
    assert value(s, "anycast_agent_target_transitions_total", **key) == 3


def test_target_state_codes_are_fixed_and_cover_every_state() -> None:
    # Dashboards and alerts compare with these numbers: they never change meaning.
    assert {s.value: c for s, c in TARGET_STATE_CODES.items()} == {
        "unknown": 0,
        "healthy": 1,
        "suspicious": 2,
        "unhealthy": 3,
        "recovering": 4,
    }
    assert set(TARGET_STATE_CODES) == set(TargetState)


@pytest.mark.parametrize("state", list(TargetState))
def test_target_state_is_one_series_per_target_whatever_the_state(state: TargetState) -> None:
    snap = make_snapshot()
    web = replace(snap.services[0], targets=(target("edge1", state),))
    s = scrape(replace(snap, services=(web,)))
    series = {labels: v for (name, labels), v in s.items() if name == "anycast_agent_target_state"}
    # One series, with labels that do not change with the state: a transition is a new value,
    # never a new series.
    assert series == {(("service", "web"), ("target", "edge1")): TARGET_STATE_CODES[state]}


def test_service_and_route_metrics() -> None:
    s = scrape(make_snapshot())
    assert value(s, "anycast_agent_service_healthy_targets", service="web") == 2
    assert value(s, "anycast_agent_service_targets", service="web") == 3
    assert value(s, "anycast_agent_service_quorum_targets", service="web") == 1
    assert value(s, "anycast_agent_service_up", service="web") == 1
    assert value(s, "anycast_agent_service_up", service="dns") == 0
    assert value(s, "anycast_agent_service_transitions_total", service="web") == 4
    assert value(s, "anycast_agent_ramp_stage_percent", service="web") == 100
    assert value(s, "anycast_agent_ramp_held", service="dns") == 1
    assert value(s, "anycast_agent_service_med", service="web") == 150
    assert ("anycast_agent_service_med", (("service", "dns"),)) not in s
    assert value(s, "anycast_agent_service_med_override", service="web") == 1
    assert value(s, "anycast_agent_service_drained", service="dns") == 1
    assert value(s, "anycast_agent_service_drained", service="web") == 0
    assert value(s, "anycast_agent_service_suppressed", service="dns") == 1
    assert value(s, "anycast_agent_service_damping_penalty", service="dns") == 1500.5
    r1 = {"service": "web", "prefix": "192.0.2.10/32", "neighbor": "198.51.100.1"}
    r2 = {**r1, "neighbor": "198.51.100.3"}
    assert value(s, "anycast_agent_route_announced", **r1) == 1
    assert value(s, "anycast_agent_route_wanted", **r1) == 1
    assert value(s, "anycast_agent_route_med", **r1) == 150
    assert value(s, "anycast_agent_route_announced", **r2) == 0
    assert value(s, "anycast_agent_route_wanted", **r2) == 1
    assert ("anycast_agent_route_med", tuple(sorted(r2.items()))) not in s


def test_fleet_metrics() -> None:
    s = scrape(make_snapshot(fleet_last_contact=7.0), now=9.25)
    assert value(s, "anycast_agent_fleet_mode", mode="connected") == 1
    assert value(s, "anycast_agent_fleet_mode", mode="degraded") == 0
    assert value(s, "anycast_agent_fleet_guard_refusals_total", reason="too_few") == 2
    assert value(s, "anycast_agent_fleet_guard_holding", service="dns") == 1
    assert value(s, "anycast_agent_fleet_budget_slots_in_use") == 1
    assert value(s, "anycast_agent_fleet_budget_slots") == 3
    assert value(s, "anycast_agent_fleet_contact_age_seconds") == 2.25
    standalone = scrape(make_snapshot(fleet_mode=FleetMode.STANDALONE))
    assert {name for name, _ in standalone if name.startswith("anycast_agent_fleet")} == {
        "anycast_agent_fleet_mode"
    }


def test_no_free_text_in_labels() -> None:
    s = scrape(make_snapshot())
    label_values = {v for _, labels in s for _, v in labels}
    for text in ("HTTP 500", "maintenance", "traffic shift", "2/3 healthy", "alice"):
        assert text not in label_values


def test_only_the_agents_own_metrics() -> None:
    body = exposition(make_snapshot())
    assert "process_" not in body and "python_" not in body


def test_the_ages_are_read_at_each_request() -> None:
    # The rest of a rendering is fixed by the snapshot; the ages are not (a stalled agent makes
    # no new snapshot, and its progress age must still grow).
    encoded = metrics.render(
        make_snapshot(last_progress=100.0, fleet_last_contact=99.0), Format.TEXT
    )
    early, late = (encoded.fill(Clocks(t, 0.0)).decode() for t in (101.0, 160.0))
    assert "anycast_agent_last_progress_age_seconds 1.0\n" in early
    assert "anycast_agent_last_progress_age_seconds 60.0\n" in late
    assert "anycast_agent_fleet_contact_age_seconds 61.0\n" in late
    ages = ("anycast_agent_last_progress_age_seconds ", "anycast_agent_fleet_contact_age_seconds ")

    def others(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(ages)]

    assert others(early) == others(late)


def test_every_exported_name_is_documented() -> None:
    assert exported_names() == documented_metrics()


@pytest.mark.parametrize(
    ("phase", "up"),
    [
        (Phase.UP, 1),
        (Phase.RAMPING, 1),  # read 0 before the PoP core issue: the metric compared with "up"
        (Phase.UNKNOWN, 0),
        (Phase.DOWN, 0),
        (Phase.SUPPRESSED, 0),
        (Phase.DRAINING, 0),
        (Phase.DRAINED, 0),
    ],
)
def test_service_up_means_healthy_and_announced(phase: Phase, up: int) -> None:
    snap = make_snapshot()
    web = replace(snap.services[0], phase=phase)
    s = scrape(replace(snap, services=(web, *snap.services[1:])))
    assert value(s, "anycast_agent_service_up", service="web") == up


def test_a_session_drain_is_exported() -> None:
    snap = make_snapshot()
    web = replace(snap.services[0], session_drains={"198.51.100.1": "IXP work (op)"})
    snap = replace(snap, services=(web, *snap.services[1:]))
    expected = 'anycast_agent_session_drained{neighbor="198.51.100.1",service="web"} 1.0'
    assert expected in exposition(snap)


# --- the same bytes as prometheus_client's encoders -------------------------------------------


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _hostile() -> Snapshot:
    """Label values to escape, and numbers Go formats otherwise than Python."""
    snap = make_snapshot(starts=12_345_678, commands_sent=10**6, canary_up=None)
    odd = replace(
        snap.services[0],
        name='we"b\\x\ny',
        penalty=math.inf,
        targets=(target('e"1\\', probes_ok=10**7, last_latency_s=1e-7), target("e2", probes_ok=0)),
    )
    return replace(snap, services=(odd, *snap.services[1:]), fleet_mode=FleetMode.STANDALONE)


@pytest.mark.parametrize("snap", [make_snapshot(), _hostile()], ids=["usual", "hostile"])
def test_text_format_is_what_prometheus_client_writes(snap: Snapshot) -> None:
    ours = exposition(snap, Format.TEXT, mono=1e9)
    families = list(text_string_to_metric_families(ours))
    assert generate_latest(_Families(families)).decode() == ours


@pytest.mark.parametrize("snap", [make_snapshot(), _hostile()], ids=["usual", "hostile"])
def test_openmetrics_is_what_prometheus_client_writes(snap: Snapshot) -> None:
    ours = exposition(snap, Format.OPENMETRICS, mono=1e9)
    families = list(om_families(ours))  # the OpenMetrics parser is strict: it checks the syntax
    assert om_exposition.generate_latest(_Families(families)).decode() == ours
    assert ours.endswith("# EOF\n")


def test_the_parsed_values_match_the_snapshot() -> None:
    # The round trip above re-encodes parsed values: check they are the snapshot's own.
    s = scrape(_hostile())
    key = {"service": 'we"b\\x\ny', "target": 'e"1\\'}
    assert value(s, "anycast_agent_target_probes_total", result="ok", **key) == 10**7
    assert value(s, "anycast_agent_target_probe_duration_seconds", **key) == 1e-7
    assert value(s, "anycast_agent_service_damping_penalty", service=key["service"]) == math.inf
    assert value(s, "anycast_agent_starts_total") == 12_345_678


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "text/plain",
        "text/plain;version=0.0.4",
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=0.0.1",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5",
        "text/plain;version=1.0.0,application/openmetrics-text",
    ],
)
def test_the_format_is_negotiated_as_prometheus_client_does(accept: str) -> None:
    _, theirs = choose_encoder(accept)
    assert theirs.split(";")[0] == metrics.negotiate(accept).value.split(";")[0]


@pytest.mark.parametrize(
    "x",
    [0, 1, 999_999, 1_000_000, 10**20, -1, 0.0, -0.0, 1e-7, 0.012, 999_999.5, 1e6, 123456789.0,
     -1e20, math.inf, -math.inf, math.nan, True, False],
)  # fmt: skip
def test_numbers_are_written_as_prometheus_client_writes_them(x: float) -> None:
    assert metrics.num(x) == floatToGoString(x)


@given(st.floats() | st.integers(min_value=-(10**30), max_value=10**30))
def test_any_number_is_written_as_prometheus_client_writes_it(x: float) -> None:
    assert metrics.num(x) == floatToGoString(x)
