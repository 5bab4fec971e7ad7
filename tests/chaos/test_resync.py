"""Chaos R27 and R24 against the running agent, judged at the upstream: ExaBGP reloading its
own config (SIGUSR1, SIGUSR2) ends with the wanted routes and explicit MEDs, and a route ExaBGP
refuses is visible as wanted != held with the error count rising."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from typing import Any

import pytest

from tests.integration.agent_lab import AgentLab, ServiceSpec, agent_config
from tests.lab.exabgp import ExabgpVersion
from tests.lab.topology import PopLabFactory
from tests.lab.wait import wait_for

WEB = "192.0.2.10/32"
WEB6 = "2001:db8::10/128"
RESYNC_S = 2


def status(agent: AgentLab) -> dict[str, Any]:
    argv = [sys.executable, "-m", "anycast_agent", "status", "--json"]
    out = agent.lab.pop.run([*argv, "--config", str(agent.config_path)]).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def started(pop_lab_factory: PopLabFactory, version: ExabgpVersion, **kw: Any) -> AgentLab:
    lab = pop_lab_factory(exabgp_version=version, **kw)
    services = [ServiceSpec("web", [WEB], edges=[0], med=150)]
    if kw.get("ipv6_sessions"):
        services = [ServiceSpec("web", [WEB, WEB6], edges=[0], med=150)]
    agent = AgentLab(lab, services)
    agent.write_config({**agent_config(lab, agent.services), "resync_interval": f"{RESYNC_S}s"})
    return agent


@pytest.mark.parametrize("exabgp_version", ["4.2", "5.0"])
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=["SIGUSR1", "SIGUSR2"])
def test_exabgp_reloading_its_own_config_ends_with_the_wanted_routes(
    pop_lab_factory: PopLabFactory, exabgp_version: ExabgpVersion, sig: signal.Signals
) -> None:
    agent = started(pop_lab_factory, exabgp_version)
    agent.start()
    lab = agent.lab
    lab.bird.wait_route(WEB, timeout_s=15)
    agent.wait_log("announce 192.0.2.10/32")
    # The operator edits ExaBGP's own config (a static route for the anycast prefix, no MED)
    # and reloads ExaBGP: it now sends that route instead of the agent's, and tells the
    # agent nothing (SIGUSR1), or restarts it (SIGUSR2).
    conf = lab.workdir / "exabgp-agent.conf"
    static = "    static {\n        route 192.0.2.10/32 next-hop self;\n    }\n    api {"
    conf.write_text(conf.read_text().replace("    api {", static, 1))
    mark = len(agent.log())
    started_at = time.monotonic()
    agent.exa.send_signal(sig)
    seen: list[tuple[float, list[int | None]]] = []

    def meds() -> list[int | None]:
        now = [r.med for r in lab.bird.route(WEB)]
        if not seen or seen[-1][1] != now:
            seen.append((round(time.monotonic() - started_at, 2), now))
        return now

    wait_for(meds, lambda m: m == [None], timeout_s=5, what="ExaBGP's static route at BIRD")

    # Corrected within resync_interval of the last change ExaBGP made (5.0 sends its static
    # route once more after the session came back), and then kept.
    def settled() -> bool:
        now = meds()
        return now == [150] and time.monotonic() - started_at - seen[-1][0] >= RESYNC_S + 1

    wait_for(settled, timeout_s=3 * RESYNC_S + 10, what="MED 150, kept for a resync_interval")
    log = agent.log()[mark:]
    corrections = status(agent)["resync_corrections"]
    print(
        f"\n[R27 exabgp {exabgp_version} {sig.name}] MED at BIRD: {seen}; corrections {corrections}"
    )
    if sig is signal.SIGUSR1:  # the running agent re-read ExaBGP's routes and corrected them
        assert "otherwise than it acknowledged" in log and corrections >= 1
    else:  # the new agent saw a route with no MED: not its own, so its MED went out at once
        assert "announce 192.0.2.10/32 med 150" in log


def test_a_route_exabgp_refuses_is_visible_and_retried_with_backoff(
    pop_lab_factory: PopLabFactory,
) -> None:
    # R24: ExaBGP's config lacks one neighbor the agent names (edited by hand, or rendered
    # from another agent config): ExaBGP refuses every route towards it.
    agent = started(pop_lab_factory, "5.0", ipv6_sessions=True)

    def without_v6(conf: str) -> str:
        v6 = re.search(r"\nneighbor (\S+:\S*) \{.*?\n\}\n", conf, re.S)
        assert v6 is not None
        return conf.replace(v6[0], "\n")

    agent.start(edit_conf=without_v6)
    lab = agent.lab
    lab.bird.wait_route(WEB, timeout_s=15)
    agent.wait_log("ExaBGP refused announce 2001:db8", timeout_s=10)
    state = status(agent)
    [route6] = [r for s in state["services"] for r in s["routes"] if r["prefix"] == WEB6]
    print(f"\n[R24] {route6}; acks {state['commands_acked']}")
    assert route6["wanted"] is not None and not route6["in_sync"]
    assert state["commands_acked"].get("error", 0) >= 1
    assert "tried again in 30s" in agent.log()
    assert lab.bird.route(WEB)  # the IPv4 route is untouched
