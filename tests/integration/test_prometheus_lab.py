"""A real Prometheus (Debian's) scrapes the running agent and evaluates docs/ops/alerts.yml with
its `for` durations shortened: ServiceWithdrawn is seen firing through Prometheus's API when
the edge dies, and resolving when it is back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.prereqs import require_tool
from tests.lab.topology import PopLabFactory
from tests.lab.wait import wait_for

ALERTS = Path(__file__).resolve().parents[2] / "docs" / "ops" / "alerts.yml"
WEB = "192.0.2.10/32"
API = "http://127.0.0.1:9090/api/v1"


def firing(agent: AgentLab, name: str) -> list[dict[str, Any]]:
    out = agent.lab.pop.run(["curl", "-sf", f"{API}/alerts"], check=False).stdout
    if not out:
        return []
    alerts = json.loads(out)["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_prometheus_sees_service_withdrawn_fire_and_resolve(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    binary = require_tool("prometheus", "prometheus")
    agent = AgentLab(
        pop_lab_factory(exabgp_version=exabgp_version), [ServiceSpec("web", [WEB], edges=[0])]
    )
    agent.start()
    lab = agent.lab
    lab.bird.wait_route(WEB, timeout_s=10)
    # The rules as shipped, with every `for` cut to 2 s (a test copy; the file is unchanged).
    rules = lab.workdir / "alerts.yml"
    rules.write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 2s", ALERTS.read_text()))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "anycast-agent", "static_configs": [{"targets": ["127.0.0.1:9179"]}]}
        ],
    }
    conf = lab.workdir / "prometheus.yml"
    conf.write_text(yaml.safe_dump(config))
    lab.pop.popen(
        [
            binary,
            f"--config.file={conf}",
            f"--storage.tsdb.path={lab.workdir / 'tsdb'}",
            "--web.listen-address=127.0.0.1:9090",
        ],
        stdout_path=lab.workdir / "prometheus.log",
        stderr_path=lab.workdir / "prometheus.log",
    )
    wait_for(
        lambda: lab.pop.run(["curl", "-sf", f"{API}/targets"], check=False).stdout,
        lambda out: '"health":"up"' in out,
        timeout_s=20,
        what="Prometheus scraping the agent",
    )
    assert firing(agent, "ServiceWithdrawn") == []
    started = time.monotonic()
    lab.edges["edge1"].kill()
    lab.bird.wait_route(WEB, present=False, timeout_s=10)
    wait_for(lambda: firing(agent, "ServiceWithdrawn"), timeout_s=20, what="the alert firing")
    fired_s = time.monotonic() - started
    [alert] = firing(agent, "ServiceWithdrawn")
    assert alert["labels"]["service"] == "web"
    assert alert["annotations"]["summary"] == "web is withdrawn on 127.0.0.1:9179 without a drain"
    lab.edges["edge1"].restart()
    lab.bird.wait_route(WEB, timeout_s=10)
    wait_for(lambda: firing(agent, "ServiceWithdrawn"), lambda f: f == [], timeout_s=20)
    print(
        f"\n[prometheus] ServiceWithdrawn firing {fired_s:.1f}s after the edge died "
        f"(for: 2s in the test copy), resolved once the route was back"
    )
