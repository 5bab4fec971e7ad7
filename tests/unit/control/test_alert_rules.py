"""Every alert of docs/ops/alerts.yml tested by `promtool test rules`: it fires on its condition
once its `for` has passed, stays quiet before that and without the condition, and says what the
operator should read (its annotations, rendered from the rule's own templates)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.prereqs import require_tool

ALERTS = Path(__file__).resolve().parents[3] / "docs" / "ops" / "alerts.yml"
POP = {"job": "anycast-agent", "instance": "pop1"}


@dataclass(frozen=True)
class Case:
    """Series (promtool's expanding notation, one sample a minute), when the alert must be
    firing with which labels and `$value`, and when it must be quiet."""

    alert: str
    series: dict[str, str]
    fires_at: str
    labels: dict[str, str]
    value: float
    quiet_at: tuple[str, ...] = field(default_factory=tuple)


def s(name: str, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in {**POP, **labels}.items())
    return f"{name}{{{inner}}}"


CASES = [
    Case("AnycastAgentDown", {s("up"): "1 1 0x5"}, "5m", POP, 1, ("1m", "3m")),
    Case(
        "ServiceWithdrawn",
        {
            s("anycast_agent_route_announced", service="web", neighbor="n1", prefix="p"): "1 0x5",
            s("anycast_agent_service_drained", service="web"): "0x6",
            s("anycast_agent_route_announced", service="dns", neighbor="n1", prefix="q"): "0x6",
            s("anycast_agent_service_drained", service="dns"): "1x6",
        },
        "4m",
        {"instance": "pop1", "service": "web"},
        0,
        ("0m", "2m"),
    ),
    Case(
        "RampStuck",
        {s("anycast_agent_ramp_stage_percent", service="web"): "25x20"},
        "16m",
        {**POP, "service": "web"},
        25,
        ("14m",),
    ),
    Case(
        "CheckerFault",
        {s("anycast_agent_checker_fault", reason="EMFILE"): "0 1x3"},
        "3m",
        {"instance": "pop1", "reason": "EMFILE"},
        1,
        ("0m", "1m"),
    ),
    Case(
        "ProbeBug",
        {s("anycast_agent_probe_bugs_total", service="web", target="e1"): "0 0 1 1"},
        "3m",
        {**POP, "service": "web", "target": "e1"},
        1,
        ("1m",),
    ),
    Case(
        "FdLimitShort",
        {s("anycast_agent_fd_needed"): "100 300", s("anycast_agent_fd_limit"): "256 256"},
        "1m",
        POP,
        300,
        ("0m",),
    ),
    Case(
        "StateWriteFailing",
        {s("anycast_agent_state_write_errors_total"): "0 0 2 2"},
        "3m",
        POP,
        2,
        ("1m",),
    ),
    Case("RemovalHeld", {s("anycast_agent_removal_held_routes"): "0 3"}, "1m", POP, 3, ("0m",)),
    Case("StateUnreadable", {s("anycast_agent_state_unreadable"): "0 1"}, "1m", POP, 1, ("0m",)),
    Case(
        "AgentRespawning",
        # A counter whose first sample in the window is 0: increase() does not extrapolate.
        {s("anycast_agent_starts_total"): "0x10 1 2 3 4 5"},
        "15m",
        POP,
        5,
        ("13m",),
    ),
    Case(
        "LastGoodConfigInUse",
        {s("anycast_agent_last_good_config_in_use"): "0 1 1 1"},
        "2m",
        POP,
        1,
        ("0m", "1m"),
    ),
    Case(
        "ExabgpChannelDown",
        {s("anycast_agent_exabgp_channel_up"): "1 0 0 0"},
        "2m",
        POP,
        0,
        ("0m", "1m"),
    ),
    Case(
        "NeighborDown",
        {s("anycast_agent_neighbor_up", neighbor="198.51.100.1"): "1 0x8"},
        "6m",
        {**POP, "neighbor": "198.51.100.1"},
        0,
        ("4m",),
    ),
    Case(
        "ProbeFailureRatioHigh",
        {
            s("anycast_agent_target_probes_total", service="web", target="e1", result="ok"): (
                "0+30x30"
            ),
            s("anycast_agent_target_probes_total", service="web", target="e1", result="failed"): (
                "0+30x30"
            ),
        },
        "20m",
        {"instance": "pop1", "service": "web", "target": "e1"},
        0.5,
        ("8m",),
    ),
    Case(
        "ExabgpRefusesRoutes",
        {s("anycast_agent_commands_acked_total", result="error"): "0 1x10"},
        "7m",
        {**POP, "result": "error"},
        1,
        ("4m",),
    ),
    Case(
        "ExabgpRoutesCorrected",
        {s("anycast_agent_resync_corrections_total"): "0 0 4x5"},
        "3m",
        POP,
        4,
        ("1m",),
    ),
    Case(
        "FleetDegraded",
        {
            s("anycast_agent_fleet_mode", mode="degraded"): "0 1x4",
            s("anycast_agent_fleet_mode", mode="connected"): "1 0x4",
        },
        "4m",
        {**POP, "mode": "degraded"},
        1,
        ("1m", "2m"),
    ),
    Case(
        "FleetGuardOverridden",
        {s("anycast_agent_fleet_guard_overridden", service="web"): "0 1 1"},
        "1m",
        {**POP, "service": "web"},
        1,
        ("0m",),
    ),
    Case(
        "FleetCtlKeysIgnored",
        {s("anycast_agent_fleet_ctl_ignored_keys"): "0 2x8"},
        "7m",
        POP,
        2,
        ("3m",),
    ),
    Case(
        "FleetRampStuck",
        {s("anycast_agent_fleet_drained", service="web", by="ramp"): "1x400"},
        "380m",
        {"service": "web"},
        1,
        ("300m",),
    ),
    Case(
        "FleetRegionDrained",
        {
            s("anycast_agent_fleet_info", region="eu"): "1x10",
            s("anycast_agent_fleet_drained", service="web", by="intent"): "1x10",
            s("anycast_agent_fleet_drained", service="web", by="ramp"): "0x10",
            'anycast_agent_fleet_info{instance="pop2",region="eu"}': "1x10",
            'anycast_agent_fleet_drained{instance="pop2",service="web",by="intent"}': "0 0 1x8",
            'anycast_agent_fleet_drained{instance="pop2",service="web",by="ramp"}': "0x10",
            'anycast_agent_fleet_info{instance="pop3",region="us"}': "1x10",
            'anycast_agent_fleet_drained{instance="pop3",service="web",by="intent"}': "0x10",
            'anycast_agent_fleet_drained{instance="pop3",service="web",by="ramp"}': "0x10",
        },
        "8m",
        {"region": "eu", "service": "web"},
        1,
        ("5m",),
    ),
    Case(
        "FleetGuardRefusing",
        {
            s("anycast_agent_fleet_guard_refusals_total", reason="too_few"): "0 0 3x5",
            s("anycast_agent_fleet_guard_refusals_total", reason="degraded"): "0 5 9x5",
        },
        "4m",
        {**POP, "reason": "too_few"},
        3,
        ("1m",),
    ),
]


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The few Prometheus template forms docs/ops/alerts.yml uses."""

    def one(match: re.Match[str]) -> str:
        expr = match[1].strip()
        if expr.startswith("$labels."):
            return labels[expr.removeprefix("$labels.")]
        if expr == "$value | humanizePercentage":
            return f"{value * 100:g}%"
        if expr in ("$value", "$value | humanize"):
            return f"{value:g}"
        raise AssertionError(f"template form not handled by this test: {expr!r}")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_every_alert_has_a_case() -> None:
    assert sorted(rules()) == sorted(c.alert for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.alert for c in CASES])
def test_the_alert_fires_on_its_condition_and_is_quiet_otherwise(
    case: Case, tmp_path: Path
) -> None:
    rule = rules()[case.alert]
    labels = {**case.labels, **rule["labels"]}
    expected = {
        "exp_labels": labels,
        "exp_annotations": {
            k: render(v, labels, case.value) for k, v in rule["annotations"].items()
        },
    }
    checks: list[dict[str, Any]] = [
        {"eval_time": t, "alertname": case.alert, "exp_alerts": []} for t in case.quiet_at
    ]
    checks.append({"eval_time": case.fires_at, "alertname": case.alert, "exp_alerts": [expected]})
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in case.series.items()],
                "alert_rule_test": checks,
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    run = subprocess.run(
        [require_tool("promtool", "prometheus"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
