"""The two-PoP topology as plain data: the one source for the netns lab and containerlab/.

Nodes, veth links, addresses, static routes and daemon configs live here; `tests.lab.twopop`
builds network namespaces from it and `python -m tests.lab.topology_description --write`
renders containerlab/ from it, so the two paths cannot drift (a test compares the committed
files with this module's output).

    client ── upstream (BIRD, AS 65000, protocol kernel, forwarding on) ─┬─ pop1 (ExaBGP + agent)
                                                                       └─ pop2 (ExaBGP + agent)

Each PoP serves the anycast VIP 192.0.2.10/32 (on lo) with an HTTP server that answers with the
PoP's name, and runs two edge servers (on lo) that its agent probes. Both PoPs are AS 65001:
BIRD compares MED between routes from the same neighbor AS, so PoP 1 (MED 100) wins over
PoP 2 (MED 200) while both announce with equal AS paths, and a ramping PoP 1 (AS path
prepended) loses to PoP 2 until its ramp reaches 100 %.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from anycast_agent.config import AgentConfig
from anycast_agent.exabgp_conf import agent_command, render_exabgp
from tests.lab.bird import BirdConfig, BirdSession, render_bird_conf

UPSTREAM_AS = 65000
POP_AS = 65001
VIP = "192.0.2.10"
VIP_PREFIX = f"{VIP}/32"
VIP_PORT = 80
EDGE_PORT = 8080
SERVICE = "web"
CLIENT_NET = "203.0.113.0/30"
ANYCAST_NET = "192.0.2.0/24"

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINERLAB_DIR = REPO_ROOT / "containerlab"
LAB_NAME = "anycast"
IMAGE = "anycast-lab:latest"
# Where the PoP image installs the repository (the edge/VIP server script comes from there).
IMAGE_REPO = "/opt/anycast-agent"
NODE_CONFIG_DIR = "/lab"


@dataclass(frozen=True)
class Timers:
    """Agent timers; the lab scales them down (DESIGN §5: no hidden minimum)."""

    interval_s: float
    timeout_s: float
    rise: int
    fall: int
    stage_hold_s: float
    hold_time_s: int = 3


# What containerlab users run: close to production, still a demo that ends in a minute.
CONTAINERLAB_TIMERS = Timers(interval_s=1.0, timeout_s=0.8, rise=2, fall=3, stage_hold_s=10.0)
# `make demo`: readable, yet done in well under a minute.
DEMO_TIMERS = Timers(interval_s=0.5, timeout_s=0.4, rise=2, fall=3, stage_hold_s=3.0)
# CI (`--quick`, test_failover): as fast as the 2-core runner stays reliable at.
QUICK_TIMERS = Timers(interval_s=0.3, timeout_s=0.2, rise=2, fall=3, stage_hold_s=1.5)


@dataclass(frozen=True)
class Endpoint:
    node: str
    ifname: str
    address: str  # CIDR


@dataclass(frozen=True)
class VethLink:
    a: Endpoint
    b: Endpoint


@dataclass(frozen=True)
class StaticRoute:
    node: str
    prefix: str
    via: str


@dataclass(frozen=True)
class PopSpec:
    """One PoP: its uplink to the upstream, the MED it announces, its edge servers."""

    name: str
    uplink: Endpoint
    upstream_address: str
    med: int
    edges: tuple[str, ...]

    @property
    def address(self) -> str:
        return str(ipaddress.ip_interface(self.uplink.address).ip)

    @property
    def session(self) -> str:
        """The BIRD protocol name of this PoP's session at the upstream."""
        return self.name


@dataclass(frozen=True)
class TwoPopDescription:
    links: tuple[VethLink, ...]
    routes: tuple[StaticRoute, ...]
    pops: tuple[PopSpec, ...]
    client: Endpoint
    upstream_router_id: str
    upstream_as: int = UPSTREAM_AS
    pop_as: int = POP_AS
    vip: str = VIP
    vip_port: int = VIP_PORT
    edge_port: int = EDGE_PORT
    service: str = SERVICE

    @property
    def nodes(self) -> tuple[str, ...]:
        return ("upstream", *(p.name for p in self.pops), "client")

    def pop(self, name: str) -> PopSpec:
        for pop in self.pops:
            if pop.name == name:
                return pop
        raise KeyError(f"no PoP {name!r}; have {[p.name for p in self.pops]}")

    def pop_by_address(self, address: str | None) -> str | None:
        for pop in self.pops:
            if pop.address == address:
                return pop.name
        return None

    def endpoints(self, node: str) -> list[Endpoint]:
        return [e for link in self.links for e in (link.a, link.b) if e.node == node]

    def loopback_addresses(self, node: str) -> list[str]:
        """/32s on lo: the VIP and the edge addresses of a PoP (the kernel here has no dummy
        module, and containerlab's linux nodes need no extra interface for them)."""
        for pop in self.pops:
            if pop.name == node:
                return [VIP_PREFIX, *(f"{e}/32" for e in pop.edges)]
        return []

    def forwarding(self, node: str) -> bool:
        return node == "upstream"

    # -- daemon configs --------------------------------------------------------------------

    def bird_config(self) -> BirdConfig:
        return BirdConfig(
            router_id=self.upstream_router_id,
            sessions=tuple(
                BirdSession(
                    name=pop.session,
                    local_address=pop.upstream_address,
                    local_as=self.upstream_as,
                    neighbor_address=pop.address,
                    peer_as=self.pop_as,
                    families=("ipv4",),
                )
                for pop in self.pops
            ),
        )

    def bird_conf(self) -> str:
        """The upstream's BIRD config: the lab sessions plus `protocol kernel`, so the best
        path lands in the kernel table and the upstream forwards the client's traffic."""
        return render_bird_conf(self.bird_config()) + "\n".join(
            [
                "protocol kernel {",
                "  ipv4 { import none; export all; };",
                "}",
                "",
            ]
        )

    def agent_config(
        self,
        pop_name: str,
        *,
        timers: Timers,
        state_dir: str,
        ramp: bool = True,
    ) -> dict[str, Any]:
        pop = self.pop(pop_name)
        service: dict[str, Any] = {
            "name": self.service,
            "prefixes": [VIP_PREFIX],
            "med": pop.med,
            "min_healthy": 1,
            "targets": [
                {
                    "name": f"edge{i + 1}",
                    "http": {"url": f"http://{address}:{self.edge_port}/health"},
                }
                for i, address in enumerate(pop.edges)
            ],
        }
        defaults: dict[str, Any] = {
            "interval": f"{timers.interval_s * 1000:g}ms",
            "timeout": f"{timers.timeout_s * 1000:g}ms",
            "rise": timers.rise,
            "fall": timers.fall,
        }
        if ramp:
            # One neighbor, one prefix: `auto` realises the stages as AS-path prepends.
            service["ramp"] = {"stages": [25, 50, 100], "stage_hold": f"{timers.stage_hold_s:g}s"}
            # A recovering PoP first announces a capacity-penalised MED (1 of 2 edges back);
            # the better MED must hold this long before it is sent: scaled like the ramp.
            defaults["med_hold"] = f"{timers.stage_hold_s:g}s"
            defaults["min_update_interval"] = f"{timers.stage_hold_s:g}s"
        return {
            "pop": pop.name,
            "state_dir": state_dir,
            "bgp": {
                "local_as": self.pop_as,
                "router_id": pop.address,
                "hold_time": f"{timers.hold_time_s}s",
                "neighbors": [
                    {
                        "address": pop.upstream_address,
                        "local_address": pop.address,
                        "peer_as": self.upstream_as,
                    }
                ],
            },
            "defaults": defaults,
            "services": [service],
        }


def build_two_pop() -> TwoPopDescription:
    """The addresses: /30s from 198.51.100.0/24 for the PoP uplinks, 203.0.113.0/30 for the
    client, edges on 203.0.113.11-12 (PoP 1) and .21-22 (PoP 2), the VIP 192.0.2.10/32."""
    pops = []
    links = []
    routes = []
    for index, (name, med) in enumerate((("pop1", 100), ("pop2", 200))):
        base = 4 * index
        upstream_end = Endpoint("upstream", f"eth{index + 1}", f"198.51.100.{base + 1}/30")
        pop_end = Endpoint(name, "eth1", f"198.51.100.{base + 2}/30")
        links.append(VethLink(upstream_end, pop_end))
        pops.append(
            PopSpec(
                name=name,
                uplink=pop_end,
                upstream_address=f"198.51.100.{base + 1}",
                med=med,
                edges=tuple(f"203.0.113.{10 * (index + 1) + i}" for i in (1, 2)),
            )
        )
        # The reply path to the client; no default route, so containerlab's management
        # default route stays untouched.
        routes.append(StaticRoute(name, CLIENT_NET, f"198.51.100.{base + 1}"))
    client = Endpoint("client", "eth1", "203.0.113.2/30")
    links.append(VethLink(Endpoint("upstream", "eth3", "203.0.113.1/30"), client))
    routes.append(StaticRoute("client", ANYCAST_NET, "203.0.113.1"))
    return TwoPopDescription(
        links=tuple(links),
        routes=tuple(routes),
        pops=tuple(pops),
        client=client,
        upstream_router_id="198.51.100.1",
    )


# -- containerlab rendering -------------------------------------------------------------------


def _node_setup_script(desc: TwoPopDescription, node: str) -> str:
    """What the netns builder does for `node`, as a shell script containerlab runs by `exec`
    once the links exist (interface names eth1.. are containerlab's)."""
    lines = [
        "#!/bin/sh",
        f"# Generated by `python -m tests.lab.topology_description --write`: node {node}.",
        "set -eu",
    ]
    for endpoint in desc.endpoints(node):
        lines.append(f"ip address add {endpoint.address} dev {endpoint.ifname}")
        lines.append(f"ip link set {endpoint.ifname} up")
    for cidr in desc.loopback_addresses(node):
        lines.append(f"ip address add {cidr} dev lo")
    for route in desc.routes:
        if route.node == node:
            lines.append(f"ip route add {route.prefix} via {route.via}")
    if desc.forwarding(node):
        lines.append("sysctl -qw net.ipv4.ip_forward=1")
    if node == "upstream":
        lines += [
            "mkdir -p /run/bird",
            f"setsid bird -f -c {NODE_CONFIG_DIR}/bird.conf >/var/log/bird.log 2>&1 &",
        ]
    elif node in {p.name for p in desc.pops}:
        pop = desc.pop(node)
        server = f"python3 {IMAGE_REPO}/tests/lab/edge_server.py --mode http"
        lines.append(
            f"setsid {server} --bind {desc.vip} --port {desc.vip_port} "
            f"--ready-file /run/vip.ready --control {NODE_CONFIG_DIR}/vip.json "
            ">/var/log/vip.log 2>&1 &"
        )
        for i, address in enumerate(pop.edges):
            name = f"edge{i + 1}"
            lines.append(
                f"setsid {server} --bind {address} --port {desc.edge_port} "
                f"--ready-file /run/{name}.ready --control /run/{name}.json "
                f">/var/log/{name}.log 2>&1 &"
            )
        lines += [
            "mkdir -p /var/lib/anycast-agent",
            # The lab environment of tests/lab/exabgp.py, minus what only a test needs.
            "setsid env exabgp_daemon_user=root exabgp_daemon_daemonize=false "
            "exabgp_api_ack=true exabgp_log_destination=stderr exabgp_tcp_bind= "
            f"exabgp {NODE_CONFIG_DIR}/exabgp.conf >/var/log/exabgp.log 2>&1 &",
        ]
    return "\n".join(lines) + "\n"


def vip_control(pop: str) -> str:
    """The VIP server's control file: it answers every request with the PoP's name."""
    return f'{{"status": 200, "body": "{pop}\\n", "headers": {{}}, "delay_s": 0}}\n'


def render_clab(desc: TwoPopDescription) -> str:
    nodes: dict[str, Any] = {}
    for node in desc.nodes:
        binds = [f"{node}:{NODE_CONFIG_DIR}:ro"]
        nodes[node] = {
            "kind": "linux",
            "image": IMAGE,
            "binds": binds,
            "exec": [f"sh {NODE_CONFIG_DIR}/setup.sh"],
        }
    topology = {
        "name": LAB_NAME,
        "topology": {
            "nodes": nodes,
            "links": [
                {
                    "endpoints": [
                        f"{link.a.node}:{link.a.ifname}",
                        f"{link.b.node}:{link.b.ifname}",
                    ]
                }
                for link in desc.links
            ],
        },
    }
    header = (
        "# Generated by `python -m tests.lab.topology_description --write` from the same\n"
        "# description the netns lab (tests/lab/twopop.py) is built from: edit that, not this.\n"
    )
    return header + yaml.safe_dump(topology, sort_keys=False)


def containerlab_files(
    desc: TwoPopDescription,
    timers: Timers = CONTAINERLAB_TIMERS,
    exabgp_conf: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every generated file under containerlab/, by relative path.

    `exabgp_conf` maps PoP → the agent's `render exabgp` output for that PoP's config; the
    caller runs the agent for it (see `render_exabgp_for`).
    """
    files = {"anycast.clab.yml": render_clab(desc)}
    for node in desc.nodes:
        files[f"{node}/setup.sh"] = _node_setup_script(desc, node)
    files["upstream/bird.conf"] = desc.bird_conf()
    for pop in desc.pops:
        config = desc.agent_config(
            pop.name, timers=timers, state_dir="/var/lib/anycast-agent", ramp=True
        )
        files[f"{pop.name}/agent.yaml"] = yaml.safe_dump(config, sort_keys=False)
        files[f"{pop.name}/vip.json"] = vip_control(pop.name)
        if exabgp_conf is not None:
            files[f"{pop.name}/exabgp.conf"] = exabgp_conf[pop.name]
    return files


def render_exabgp_for(desc: TwoPopDescription, pop: str, config_path: str) -> str:
    """The agent's own `render exabgp` for a PoP, run in-process (no ramp key: the exabgp.conf
    does not depend on services, and this must work before the agent knows `ramp`)."""
    data = desc.agent_config(pop, timers=CONTAINERLAB_TIMERS, state_dir="/", ramp=False)
    config = AgentConfig.model_validate(data)
    return render_exabgp(config, agent_command(Path(config_path)))


def expected_containerlab_files() -> dict[str, str]:
    desc = build_two_pop()
    exabgp = {
        pop.name: render_exabgp_for(desc, pop.name, f"{NODE_CONFIG_DIR}/agent.yaml")
        for pop in desc.pops
    }
    return containerlab_files(desc, exabgp_conf=exabgp)


def check_containerlab(directory: Path = CONTAINERLAB_DIR) -> list[str]:
    """Differences between the committed containerlab files and the generator's output."""
    problems = []
    for rel, text in expected_containerlab_files().items():
        path = directory / rel
        if not path.exists():
            problems.append(f"{path} missing")
            continue
        have = path.read_text()
        if have != text:
            diff = difflib.unified_diff(
                have.splitlines(), text.splitlines(), f"{rel} (committed)", f"{rel} (generated)"
            )
            problems.append("\n".join(diff))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write containerlab/ files")
    parser.add_argument("--dir", type=Path, default=CONTAINERLAB_DIR)
    args = parser.parse_args(argv)
    if args.write:
        for rel, text in expected_containerlab_files().items():
            path = args.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if path.suffix == ".sh":
                path.chmod(0o755)
        return 0
    problems = check_containerlab(args.dir)
    for problem in problems:
        sys.stderr.write(problem + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
