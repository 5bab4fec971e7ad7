"""The operator's tools against a running PoP: the CLI drains, reloads and reads status/metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import assert_holds, wait_for

WEB = "192.0.2.10/32"
API = "192.0.2.20/32"
GRACE_S = 1.5


def cli(agent: AgentLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anycast_agent", *args, "--url", f"unix:{socket_path(agent)}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def socket_path(agent: AgentLab) -> str:
    return str(agent.lab.workdir / "control.sock")


def start(
    factory: PopLabFactory, version: str, services: list[ServiceSpec], **lab: Any
) -> AgentLab:
    agent = AgentLab(factory(exabgp_version=version, **lab), services)
    data = yaml.safe_load(agent.config_path.read_text())
    data["control"] = {"listen": f"unix:{socket_path(agent)}"}
    data["defaults"]["drain_grace"] = GRACE_S
    agent.write_config(data)
    agent.start()
    return agent


def status(agent: AgentLab) -> dict[str, Any]:
    out = cli(agent, "status", "--json")
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def service(agent: AgentLab, name: str) -> dict[str, Any]:
    return next(s for s in status(agent)["services"] if s["name"] == name)


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_cli_drain_status_undrain_at_the_upstream(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    ramp = {"stages": [50, 100], "stage_hold": 1.0}
    agent = start(
        pop_lab_factory,
        exabgp_version,
        [ServiceSpec("web", [WEB], edges=[0], extra={"ramp": ramp})],
    )
    bird = agent.lab.bird
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and len(rs[0].as_path) == 1,
        timeout_s=10,
        what="fully announced",
    )
    drained = cli(agent, "drain", "web", "--reason", "test")
    assert drained.returncode == 0, drained.stderr
    # First de-preferred (GRACEFUL_SHUTDOWN, max MED), then withdrawn after drain_grace.
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and rs[0].med == 4294967294,
        timeout_s=5,
        what="drained MED at BIRD",
    )
    assert "65535:0" in bird.route(WEB)[0].communities
    started = time.monotonic()
    bird.wait_route(WEB, present=False, timeout_s=GRACE_S + 5)
    print(
        f"\ndrain: withdrawn {time.monotonic() - started:.2f}s after de-prefer "
        f"(drain_grace {GRACE_S}s)"
    )
    web = service(agent, "web")
    assert web["drain"]["reason"] == "test"
    table = cli(agent, "status")
    assert table.returncode == 0 and "web" in table.stdout and "drained" in table.stdout
    undrained = cli(agent, "undrain", "web")
    assert undrained.returncode == 0, undrained.stderr
    # Undrain ramps back: 50% first (AS path of 2 with GRACEFUL_SHUTDOWN), then 100%.
    wait_for(lambda: bird.route(WEB), timeout_s=10, what="re-announced after undrain")
    [first] = bird.route(WEB)
    assert len(first.as_path) == 2 and "65535:0" in first.communities, first
    wait_for(
        lambda: bird.route(WEB),
        lambda rs: bool(rs) and len(rs[0].as_path) == 1,
        timeout_s=10,
        what="back at 100%",
    )
    assert service(agent, "web")["drain"] is None


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_reload_broken_changes_nothing_and_added_service_is_announced(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0])])
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    good = yaml.safe_load(agent.config_path.read_text())
    before = bird.import_counters("pop0_v4")
    broken = json.loads(json.dumps(good))
    broken["services"][0]["prefixes"] = ["192.0.2.300/32"]
    agent.write_config(broken)
    refused = cli(agent, "reload")
    assert refused.returncode == 1
    assert "192.0.2.300/32" in refused.stderr
    assert_holds(
        lambda: bird.import_counters("pop0_v4"),
        lambda c: c == before,
        duration_s=1.0,
        what="nothing sent after a refused reload",
    )
    added = json.loads(json.dumps(good))
    added["services"].append(
        {
            "name": "api",
            "prefixes": [API],
            "targets": [{"name": "edge2", "http": {"url": "http://203.0.113.12:8080/health"}}],
            "ramp": {"stages": [50, 100], "stage_hold": 1.0},
        }
    )
    agent.lab.start_edge(1)
    agent.write_config(added)
    reloaded = cli(agent, "reload")
    assert reloaded.returncode == 0, reloaded.stderr
    t0 = time.monotonic()
    wait_for(lambda: bird.route(API), timeout_s=10, what="added service announced")
    first = bird.route(API)[0]
    assert len(first.as_path) == 2  # ramping: 50% in prepend mode
    wait_for(
        lambda: bird.route(API),
        lambda rs: bool(rs) and len(rs[0].as_path) == 1,
        timeout_s=10,
        what="added service at 100%",
    )
    print(f"\nreload: added service announced and ramped in {time.monotonic() - t0:.2f}s")
    assert bird.route(WEB)


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_metrics_parse_and_follow_the_service(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0])])
    agent.lab.bird.wait_route(WEB, timeout_s=10)
    out = subprocess.run(
        ["curl", "-sf", "--unix-socket", socket_path(agent), "http://agent/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    families = {f.name: f for f in text_string_to_metric_families(out.stdout)}
    up = families["anycast_agent_service_up"].samples
    assert [(s.labels["service"], s.value) for s in up] == [("web", 1.0)]
    assert "anycast_agent_route_announced" in families


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_another_local_user_cannot_use_the_unix_socket(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # R34: on a unix socket the credential is the socket's mode (0660) and group.
    agent = start(pop_lab_factory, exabgp_version, [ServiceSpec("web", [WEB], edges=[0])])
    bird = agent.lab.bird
    bird.wait_route(WEB, timeout_s=10)
    agent.lab.workdir.chmod(0o711)  # others may reach the socket file, not read the folder
    before = bird.import_counters("pop0_v4")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    argv += ["-m", "anycast_agent", "drain", "--all", "--reason", "x", "--yes"]
    out = subprocess.run(
        [*argv, "--url", f"unix:{socket_path(agent)}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 3, out.stderr  # unreachable: permission denied
    assert "Permission denied" in out.stderr
    assert bird.import_counters("pop0_v4") == before and bird.route(WEB)
    assert cli(agent, "drain", "--all", "--reason", "root may", "--yes").returncode == 0


@pytest.mark.parametrize("exabgp_version", ["5.0"])
def test_a_session_drain_is_seen_on_that_session_only(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    # Issue 19: one of two transit sessions drained for maintenance, then brought back.
    ramp = {"stages": [25, 50, 100], "stage_hold": "1s"}
    spec = ServiceSpec("web", [WEB], edges=[0], extra={"ramp": ramp})
    agent = start(pop_lab_factory, exabgp_version, [spec], links=2)
    lab = agent.lab
    bird = lab.bird
    first, second = (s.upstream_address for s in lab.description.sessions)

    def paths() -> dict[str | None, tuple[int | None, int]]:
        return {r.neighbor: (r.med, len(r.as_path)) for r in bird.route(WEB)}

    def pop_side(upstream: str) -> str:
        return next(
            s.pop_address for s in lab.description.sessions if s.upstream_address == upstream
        )

    wait_for(paths, lambda p: set(p.values()) == {(100, 1)} and len(p) == 2, timeout_s=15)
    drained = cli(agent, "drain", "web", "--neighbor", first, "--reason", "IXP work")
    assert drained.returncode == 0, drained.stderr
    wait_for(paths, lambda p: p.get(pop_side(first)) == (4294967294, 4), timeout_s=5)
    assert paths()[pop_side(second)] == (100, 1)
    wait_for(paths, lambda p: pop_side(first) not in p, timeout_s=10, what="withdrawn there")
    assert paths() == {pop_side(second): (100, 1)}
    assert service(agent, "web")["session_drains"] == {first: "IXP work (local)"}
    undrained = cli(agent, "undrain", "web", "--neighbor", first)
    assert undrained.returncode == 0, undrained.stderr
    lengths: set[int] = set()
    wait_for(
        lambda: lengths.update([paths().get(pop_side(first), (0, 0))[1]]) or paths(),
        lambda p: p.get(pop_side(first)) == (100, 1),
        timeout_s=15,
        what="back at full preference",
    )
    assert 2 in lengths or 4 in lengths  # it came back through the prepend ramp
    assert paths()[pop_side(second)] == (100, 1)
