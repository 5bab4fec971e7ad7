"""The metrics collector over a fake snapshot, read back with Prometheus' own parser."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from anycast_agent.control import metrics
from anycast_agent.core.snapshot import Snapshot
from anycast_agent.core.traffic import Phase
from tests.unit.control.conftest import make_snapshot
from tests.unit.control.test_ops_docs import documented_metrics, exported_names


def scrape(
    snap: Snapshot, now: float = 0.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = metrics.make_registry(lambda: snap, monotonic=lambda: now)
    body, content_type = metrics.render(registry, "")
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("anycast_agent_")
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
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
    states = {
        st: value(s, "anycast_agent_target_state", state=st, **key)
        for st in ("unknown", "healthy", "suspicious", "unhealthy", "recovering")
    }
    assert states == {"unknown": 0, "healthy": 0, "suspicious": 0, "unhealthy": 1, "recovering": 0}
    assert (
        value(s, "anycast_agent_target_probe_duration_seconds", service="web", target="edge1")
        == 0.012
    )
    assert ("anycast_agent_target_probe_duration_seconds", tuple(sorted(key.items()))) not in s
    assert value(s, "anycast_agent_target_probes_total", result="ok", **key) == 40
    assert value(s, "anycast_agent_target_probes_total", result="failed", **key) == 2
    assert value(s, "anycast_agent_target_skipped_slots_total", **key) == 1
    assert value(s, "anycast_agent_target_transitions_total", **key) == 3


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


def test_no_free_text_in_labels() -> None:
    s = scrape(make_snapshot())
    label_values = {v for _, labels in s for _, v in labels}
    for text in ("HTTP 500", "maintenance", "traffic shift", "2/3 healthy", "alice"):
        assert text not in label_values


def test_the_registry_is_private_and_read_at_scrape_time() -> None:
    snaps = [make_snapshot(starts=1)]
    registry = metrics.make_registry(lambda: snaps[-1])
    assert b"anycast_agent_starts_total 1.0" in metrics.render(registry, "")[0]
    snaps.append(make_snapshot(starts=7))
    body = metrics.render(registry, "")[0]
    assert b"anycast_agent_starts_total 7.0" in body
    assert b"process_" not in body and b"python_" not in body


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
    body, _ = metrics.render_snapshot(snap, "text/plain")
    expected = 'anycast_agent_session_drained{neighbor="198.51.100.1",service="web"} 1.0'
    assert expected in body.decode()
