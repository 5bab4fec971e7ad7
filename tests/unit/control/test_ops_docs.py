"""The ops artefacts stay true: alert rules pass promtool, and every metric they use exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from anycast_agent.control import metrics
from anycast_agent.control.rendering import Clocks
from tests.lab.prereqs import require_tool
from tests.unit.control.conftest import make_snapshot

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
ALERTS = DOCS / "ops" / "alerts.yml"
DASHBOARD = DOCS / "ops" / "grafana-dashboard.json"
METRIC = re.compile(r"\banycast_agent_[a-z0-9_]+")

REQUIRED_ALERTS = {
    "AnycastAgentDown",
    "ServiceWithdrawn",
    "RampStuck",
    "StateUnreadable",
    "AgentRespawning",
    "LastGoodConfigInUse",
    "ExabgpChannelDown",
    "NeighborDown",
    "ProbeFailureRatioHigh",
    "CheckerFault",
    "FdLimitShort",
    "StateWriteFailing",
    "ExabgpRefusesRoutes",
    "ExabgpRoutesCorrected",
    "FleetDegraded",
    "FleetGuardRefusing",
    "FleetGuardOverridden",
    "FleetCtlKeysIgnored",
    "FleetRampStuck",
    "FleetRegionDrained",
}


def documented_metrics() -> set[str]:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(anycast_agent_[a-z0-9_]+)` \|", text, flags=re.M))


def exported_names() -> set[str]:
    """Sample names the agent exports for a snapshot with every kind of value present."""
    body = metrics.render(make_snapshot(), metrics.Format.TEXT).fill(Clocks(0.0, 0.0))
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def test_promtool_accepts_the_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_dashboard_loads() -> None:
    dash = _dashboard()
    assert dash["uid"] == "anycast-agent"
    assert dash["title"]
    assert len(dash["panels"]) >= 8
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["title"] and panel["targets"], panel


@pytest.mark.parametrize(
    "needed",
    [
        "anycast_agent_service_up",
        "anycast_agent_service_healthy_targets",
        "anycast_agent_service_targets",
        "anycast_agent_route_med",
        "anycast_agent_ramp_stage_percent",
        "anycast_agent_target_probes_total",
        "anycast_agent_target_probe_duration_seconds",
        "anycast_agent_neighbor_up",
        "anycast_agent_commands_acked_total",
    ],
)
def test_dashboard_covers(needed: str) -> None:
    assert any(needed in expr for expr in _dashboard_exprs())


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_is_documented_and_exported(source: str) -> None:
    exprs = _dashboard_exprs() if source == "dashboard" else [r["expr"] for r in _alert_rules()]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used
    assert used - documented_metrics() == set()
    assert used - exported_names() == set()


def test_docs_and_collector_agree() -> None:
    assert documented_metrics() == exported_names()


def _target_state_row() -> str:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    return next(
        line for line in text.splitlines() if line.startswith("| `anycast_agent_target_state`")
    )


def test_the_target_state_codes_are_documented_as_exported() -> None:
    documented = {
        name: int(code) for code, name in re.findall(r"`(\d)` (\w+)", _target_state_row())
    }
    assert documented == {s.value: c for s, c in metrics.TARGET_STATE_CODES.items()}


def test_the_dashboard_names_the_target_state_codes() -> None:
    (panel,) = [p for p in _dashboard()["panels"] if "anycast_agent_target_state" in str(p)]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    shown = {int(code): m["text"] for code, m in mapping["options"].items()}
    assert shown == {c: s.value for s, c in metrics.TARGET_STATE_CODES.items()}
    # No label of the old one-hot form is left in a query.
    assert all("state=" not in e and "state!=" not in e for e in _dashboard_exprs())


def test_the_dashboards_target_state_query_under_promtool(tmp_path: Path) -> None:
    """The panel's own query, evaluated by Prometheus' engine: every target not healthy, with
    its state code, and never one that is healthy."""
    (expr,) = [e for e in _dashboard_exprs() if "anycast_agent_target_state" in e]
    expr = expr.replace("$instance", ".*").replace("$service", ".*")

    def series(target: str) -> str:
        return (
            f'anycast_agent_target_state{{job="anycast-agent",instance="pop1",service="web",'
            f'target="{target}"}}'
        )

    codes = {s.value: c for s, c in metrics.TARGET_STATE_CODES.items()}
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series(state), "values": f"1 {code}"}
                    for state, code in codes.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "1m",
                        "exp_samples": [
                            {"labels": series(state), "value": code}
                            for state, code in codes.items()
                            if state != "healthy"
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "dashboard-query.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    promtool = require_tool("promtool", "prometheus")
    run = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
