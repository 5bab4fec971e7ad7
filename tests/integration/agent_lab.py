"""The agent in the netns lab: config from the lab description, ExaBGP running it, its PID."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.lab.exabgp import Exabgp
from tests.lab.topology import PopLab
from tests.lab.wait import wait_for

# Scaled-down timers (DESIGN §5: no hidden minimum) keep the suite fast on 2 cores.
INTERVAL_S = 0.3
TIMEOUT_S = 0.2
RISE = 2
FALL = 3


@dataclass
class ServiceSpec:
    name: str
    prefixes: Sequence[str]
    edges: Sequence[int]  # indexes of lab edges (HTTP on port 8080)
    med: int = 100
    extra: dict[str, Any] = field(default_factory=dict)


def agent_config(lab: PopLab, services: Sequence[ServiceSpec]) -> dict[str, Any]:
    desc = lab.description
    return {
        "pop": "lab",
        "state_dir": str(lab.workdir / "state"),
        "bgp": {
            "local_as": desc.pop_as,
            "router_id": desc.pop_router_id,
            "hold_time": "3s",
            "neighbors": [
                {
                    "address": s.upstream_address,
                    "local_address": s.pop_address,
                    "peer_as": s.upstream_as,
                    "families": list(s.families),
                }
                for s in desc.sessions
            ],
        },
        "defaults": {"interval": INTERVAL_S, "timeout": TIMEOUT_S, "rise": RISE, "fall": FALL},
        "services": [
            {
                "name": svc.name,
                "prefixes": list(svc.prefixes),
                "med": svc.med,
                "targets": [
                    {
                        "name": f"edge{i + 1}",
                        "http": {"url": f"http://{desc.edge_addresses[i]}:8080/health"},
                    }
                    for i in svc.edges
                ],
                "ramp": {"stages": [100]},  # no staged re-announcement unless a test asks
                **svc.extra,
            }
            for svc in services
        ],
    }


class AgentLab:
    """A PopLab whose ExaBGP runs the real agent, configured by `anycast-agent render exabgp`."""

    def __init__(self, lab: PopLab, services: Sequence[ServiceSpec]) -> None:
        self.lab = lab
        self.services = list(services)
        self.config_path = lab.workdir / "agent.yaml"
        self.write_config(agent_config(lab, services))
        self.exabgp: Exabgp | None = None

    def write_config(self, data: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def start(
        self,
        agent_env: dict[str, str] | None = None,
        edit_conf: Callable[[str], str] | None = None,
    ) -> Exabgp:
        """Start the edges and ExaBGP running the agent (`agent_env`: extra environment for
        the agent process alone, e.g. libfaketime; `edit_conf`: what a test changes in the
        rendered exabgp.conf, as an operator might)."""
        for index in sorted({i for s in self.services for i in s.edges}):
            self.lab.start_edge(index)
        conf = self.lab.workdir / "exabgp-agent.conf"
        rendered = subprocess.run(
            [
                sys.executable,
                "-m",
                "anycast_agent",
                "render",
                "exabgp",
                "--config",
                str(self.config_path),
                "--agent",
                " ".join(
                    [
                        "/usr/bin/env",
                        *(f"{k}={v}" for k, v in (agent_env or {}).items()),
                        sys.executable,
                        "-m",
                        "anycast_agent",
                    ]
                ),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        conf.write_text(edit_conf(rendered.stdout) if edit_conf else rendered.stdout)
        # ExaBGP starts the agent with its own cwd; make the source tree importable.
        repo = str(Path(__file__).resolve().parents[2])
        self.exabgp = self.lab.start_exabgp(config_path=conf, extra_env={"PYTHONPATH": repo})
        return self.exabgp

    @property
    def exa(self) -> Exabgp:
        assert self.exabgp is not None, "start() first"
        return self.exabgp

    def agent_pids(self) -> list[int]:
        """PIDs of the agent processes ExaBGP runs (its children running anycast_agent)."""
        parent = self.exa.pid
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"anycast_agent" in cmdline:
                pids.append(int(entry))
        return pids

    def agent_pid(self, timeout_s: float = 5.0) -> int:
        found: list[int] = []

        def observe() -> list[int]:
            found[:] = self.agent_pids()
            return found

        wait_for(observe, lambda p: len(p) == 1, timeout_s=timeout_s, what="one agent process")
        return found[0]

    def log(self) -> str:
        return self.exa.log_text()

    def wait_log(self, text: str, timeout_s: float = 10.0, after: int = 0) -> int:
        """Wait for `text` in ExaBGP's log (where the agent's stderr goes) past offset `after`;
        returns the offset just past the match."""
        found: list[int] = []

        def observe() -> int:
            i = self.log().find(text, after)
            found[:] = [i]
            return i

        wait_for(observe, lambda i: i >= 0, timeout_s=timeout_s, what=f"log line {text!r}")
        return found[0] + len(text)
