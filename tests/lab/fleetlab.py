"""`FleetLab`: N PoPs in regions coordinating through etcd (DESIGN §3.7, FLEET.md §3.11 tier 3).

The two-PoP lab's pieces, more PoPs, and an etcd member behind the upstream:

    pop1 (ExaBGP + agent) ─┐
    pop2 (ExaBGP + agent) ─┤
     ...                   ├─ upstream (BIRD, AS 65000, forwarding on) ── etcd (one member)
    popN (ExaBGP + agent) ─┘

Every PoP is AS 65001 and announces 192.0.2.10/32 (MEDs 100, 200, ...) while its two edge
servers answer; its agent's config carries a `fleet:` key with its region and the etcd member
(198.51.100.4N+2:2379, reached through the upstream like any host behind it; the etcd node
stands where the two-PoP lab's client is). Each agent's control endpoint is a unix socket in the
work dir, so the tests read status and metrics from the root namespace; `ctl/` keys are written
with the agent's own `EtcdClient`, run inside the etcd namespace (`FleetLab.ctl_put`).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.lab.bird import BirdRoute, ImportCounters
from tests.lab.exabgp import ExabgpVersion
from tests.lab.netns import Netns
from tests.lab.processes import signal_pid, terminate
from tests.lab.topology_description import (
    QUICK_TIMERS,
    VIP_PREFIX,
    Endpoint,
    PopSpec,
    StaticRoute,
    Timers,
    TwoPopDescription,
    VethLink,
)
from tests.lab.twopop import Client, PopNode, TwoPopLab
from tests.lab.wait import wait_for

ETCD = "etcd"  # found on PATH by `ip netns exec` (Debian: /usr/bin/etcd)
ETCD_NODE = "etcd"
ETCD_PORT = 2379
ETCD_PEER_URL = "http://127.0.0.1:2380"  # single member: its peer URL stays inside its netns
FLEET_PREFIX = "/anycast/v1/"
# What a refused withdraw leaves at the peer (DESIGN §3.5, FLEET.md §3.5).
DEPREFERRED_MED = 4294967294
GRACEFUL_SHUTDOWN = "65535:0"
DEPREFER_PREPENDS = 4
DEFAULT_REGION = "eu"
MAX_POPS = 20  # the addressing plan's room: uplinks 198.51.100.0/30.., edges 203.0.113.N1-N2


@dataclass(frozen=True)
class FleetDescription(TwoPopDescription):
    """The two-PoP description's shape with N PoPs; `client` is the etcd node's endpoint.

    `regions` pairs PoPs with their `fleet.region` (a PoP not listed is in `DEFAULT_REGION`);
    `drain_grace_s` sets `defaults.drain_grace` (the agent's default when None)."""

    etcd_port: int = ETCD_PORT
    min_pops: int = 2
    budget_slots: int = 3
    budget_window_s: float = 60.0
    lease_ttl_s: float = 3.0
    etcd_timeout_s: float = 0.5
    stale_after_s: float = 2.0
    regions: tuple[tuple[str, str], ...] = ()
    drain_grace_s: float | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        return ("upstream", *(p.name for p in self.pops), ETCD_NODE)

    @property
    def etcd_address(self) -> str:
        return str(ipaddress.ip_interface(self.client.address).ip)

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_address}:{self.etcd_port}"

    def region_of(self, pop_name: str) -> str:
        self.pop(pop_name)  # KeyError for an unknown PoP
        return dict(self.regions).get(pop_name, DEFAULT_REGION)

    def region_pops(self, region: str) -> list[str]:
        return [p.name for p in self.pops if self.region_of(p.name) == region]

    def fleet_config(self, pop_name: str | None = None) -> dict[str, Any]:
        return {
            "endpoints": [self.etcd_url],
            "region": DEFAULT_REGION if pop_name is None else self.region_of(pop_name),
            "min_pops": self.min_pops,
            "budget": {"slots": self.budget_slots, "window": f"{self.budget_window_s:g}s"},
            "lease_ttl": f"{self.lease_ttl_s:g}s",
            "timeout": f"{self.etcd_timeout_s:g}s",
            "stale_after": f"{self.stale_after_s:g}s",
        }

    def agent_config(
        self,
        pop_name: str,
        *,
        timers: Timers,
        state_dir: str,
        ramp: bool = True,
    ) -> dict[str, Any]:
        """The two-PoP agent config plus `fleet:` and a unix-socket control endpoint."""
        data = super().agent_config(pop_name, timers=timers, state_dir=state_dir, ramp=ramp)
        data["fleet"] = self.fleet_config(pop_name)
        data["control"] = {"listen": f"unix:{control_socket(state_dir)}"}
        if self.drain_grace_s is not None:
            data["defaults"]["drain_grace"] = f"{self.drain_grace_s:g}s"
        return data


def control_socket(state_dir: str | Path) -> Path:
    """The agent's control socket: next to its state dir (the dir may not exist yet)."""
    state = Path(state_dir)
    return state.with_name(f"{state.name}.sock")


def build_fleet(
    pops: int = 3,
    min_pops: int = 2,
    *,
    regions: Sequence[str] | None = None,
    drain_grace_s: float | None = None,
) -> FleetDescription:
    """PoP N's uplink is 198.51.100.4(N-1)/30 (upstream .1, PoP .2), its edges 203.0.113.N1-N2;
    the etcd link is the next /30 (with 3 PoPs: 198.51.100.12/30, upstream .13, etcd .14).
    `regions` names each PoP's region in order (all in `DEFAULT_REGION` when None)."""
    if not 1 <= pops <= MAX_POPS:
        raise ValueError(f"the addressing plan has room for 1 to {MAX_POPS} PoPs")
    if regions is not None and len(regions) != pops:
        raise ValueError(f"{len(regions)} regions for {pops} PoPs")
    specs = []
    links = []
    routes = []
    etcd_base = 4 * pops
    etcd_net = f"198.51.100.{etcd_base}/30"
    etcd_gateway = f"198.51.100.{etcd_base + 1}"
    for index in range(pops):
        name = f"pop{index + 1}"
        base = 4 * index
        upstream_end = Endpoint("upstream", f"eth{index + 1}", f"198.51.100.{base + 1}/30")
        pop_end = Endpoint(name, "eth1", f"198.51.100.{base + 2}/30")
        links.append(VethLink(upstream_end, pop_end))
        specs.append(
            PopSpec(
                name=name,
                uplink=pop_end,
                upstream_address=f"198.51.100.{base + 1}",
                med=100 * (index + 1),
                edges=tuple(f"203.0.113.{10 * (index + 1) + i}" for i in (1, 2)),
            )
        )
        routes.append(StaticRoute(name, etcd_net, f"198.51.100.{base + 1}"))
    etcd = Endpoint(ETCD_NODE, "eth1", f"198.51.100.{etcd_base + 2}/30")
    links.append(VethLink(Endpoint("upstream", f"eth{pops + 1}", f"{etcd_gateway}/30"), etcd))
    # Back to every PoP uplink through the upstream (its own /30 is the more specific route).
    routes.append(StaticRoute(ETCD_NODE, "198.51.100.0/24", etcd_gateway))
    return FleetDescription(
        links=tuple(links),
        routes=tuple(routes),
        pops=tuple(specs),
        client=etcd,
        upstream_router_id="198.51.100.1",
        min_pops=min_pops,
        regions=tuple(zip((p.name for p in specs), regions or (), strict=False)),
        drain_grace_s=drain_grace_s,
    )


# -- etcd -------------------------------------------------------------------------------------

# Run inside a namespace: one call of etcd's v3 JSON gateway; prints the JSON answer.
_GATEWAY_CALL = """
import json, sys, urllib.request
url, path, body = sys.argv[1:4]
data = body.encode() or None
req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
with urllib.request.urlopen(req, timeout=float(sys.argv[4])) as r:
    sys.stdout.write(r.read().decode())
"""


# Run inside a namespace: one put or delete with the agent's own etcd client; prints the
# revision etcd answered with.
_CLIENT_CALL = """
import asyncio, json, sys
from anycast_agent.fleet.etcd_http import EtcdClient
url, op, key, value, timeout = sys.argv[1:6]
async def call():
    async with EtcdClient([url], timeout_s=float(timeout)) as client:
        if op == "put":
            return await client.put(key, value.encode())
        return await client.delete(key)
sys.stdout.write(json.dumps({"revision": asyncio.run(call())}))
"""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdMember:
    """A one-member etcd 3.4 cluster in a namespace, listening for clients on `address`; its
    data dir is in the lab's work dir. Stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, netns: Netns, workdir: Path, address: str, port: int = ETCD_PORT) -> None:
        self.netns = netns
        self.address = address
        self.port = port
        self.url = f"http://{address}:{port}"
        self.data_dir = workdir / "etcd.data"
        self.log_path = workdir / "etcd.log"
        self.cluster_token = workdir.name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        self.proc = self.netns.popen(
            [
                ETCD,
                "--name",
                "m1",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                ETCD_PEER_URL,
                "--initial-advertise-peer-urls",
                ETCD_PEER_URL,
                "--initial-cluster",
                f"m1={ETCD_PEER_URL}",
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                self.cluster_token,
                "--pre-vote=true",
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ],
            env=env,
            stdout_path=self.log_path,
            stderr_path=self.log_path,
        )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("etcd was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(
        self, path: str, body: dict[str, Any] | None = None, *, via: Netns, timeout_s: float = 1.0
    ) -> dict[str, Any]:
        """One gateway call made from inside `via` (raises if etcd does not answer)."""
        proc = via.run(
            [
                sys.executable,
                "-c",
                _GATEWAY_CALL,
                self.url,
                path,
                json.dumps(body) if body is not None else "",
                str(timeout_s),
            ],
            check=False,
            timeout_s=timeout_s + 5.0,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"etcd {path} from {via.name}: {proc.stderr.strip()[-300:]}")
        answer: dict[str, Any] = json.loads(proc.stdout)
        return answer

    def write(
        self, op: str, key: str, value: str = "", *, via: Netns, timeout_s: float = 2.0
    ) -> int:
        """A put (`op` "put") or delete of `key` by `EtcdClient`, run inside `via`; the
        revision of the write."""
        proc = via.run(
            [sys.executable, "-c", _CLIENT_CALL, self.url, op, key, value, str(timeout_s)],
            check=False,
            timeout_s=timeout_s + 10.0,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"etcd {op} {key} from {via.name}: {proc.stderr.strip()[-300:]}")
        revision: int = json.loads(proc.stdout)["revision"]
        return revision

    def healthy(self, via: Netns) -> bool:
        self._check_alive()
        return self.call("/health", via=via).get("health") == "true"

    def wait_healthy(self, via: Netns, timeout_s: float = 15.0) -> float:
        return wait_for(
            lambda: self.healthy(via),
            timeout_s=timeout_s,
            interval_s=0.1,
            what=f"etcd at {self.url} healthy from {via.name}",
        )

    def range_prefix(self, prefix: str, *, via: Netns) -> dict[str, str]:
        """Every key under `prefix` with its value (text)."""
        answer = self.call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)}, via=via
        )
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in answer.get("kvs", [])
        }

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"etcd exited {self.proc.returncode}: {self.log_tail()}")

    def stop(self, grace_s: float = 2.0) -> int | None:
        """SIGTERM by PID, SIGKILL after `grace_s`; the exit status."""
        if self.proc is None:
            return None
        return terminate(self.proc, grace_s)

    def kill(self) -> None:
        if self.running:
            signal_pid(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"


# -- the agents' control endpoints ------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def control_get(path: Path, url_path: str, timeout_s: float = 2.0) -> str:
    """GET `url_path` from the control endpoint on the unix socket `path`."""
    conn = _UnixHTTPConnection(path, timeout_s)
    try:
        conn.request("GET", url_path)
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        if response.status != 200:
            raise RuntimeError(f"GET {url_path}: HTTP {response.status}: {body[:200]}")
        return body
    finally:
        conn.close()


def fleet_mode_in_status(status: dict[str, Any]) -> str | None:
    """The fleet mode if the status JSON carries one (`fleet: {mode}` or `fleet_mode`)."""
    fleet = status.get("fleet")
    if isinstance(fleet, dict) and isinstance(fleet.get("mode"), str):
        return str(fleet["mode"])
    if isinstance(status.get("fleet_mode"), str):
        return str(status["fleet_mode"])
    return None


def fleet_mode_in_metrics(text: str) -> str | None:
    """The mode whose `fleet_mode{mode=...}` gauge is 1."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("fleet_mode") and sample.value == 1.0:
                return sample.labels.get("mode")
    return None


@dataclass(frozen=True)
class VipPath:
    """What the upstream holds from one PoP for the VIP."""

    med: int | None
    as_path: tuple[int, ...]
    gshut: bool

    def __str__(self) -> str:
        return f"med {self.med} aspath x{len(self.as_path)}{' gshut' if self.gshut else ''}"


View = dict[str, VipPath]  # by PoP; a PoP without a path is missing


def show_view(v: View) -> str:
    return ", ".join(f"{pop}: {path}" for pop, path in v.items()) or "no path"


class FleetPop(PopNode):
    """A PoP whose agent coordinates through etcd; read over its control socket."""

    @property
    def state_dir(self) -> Path:
        return self.lab.workdir / f"{self.name}-state"

    @property
    def control_path(self) -> Path:
        return control_socket(self.state_dir)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(control_get(self.control_path, "/v1/status"))
        return data

    def metrics(self) -> str:
        return control_get(self.control_path, "/metrics")

    def fleet_mode(self) -> str | None:
        """From the status JSON, else from the `fleet_mode` gauge."""
        mode = fleet_mode_in_status(self.status())
        return mode if mode is not None else fleet_mode_in_metrics(self.metrics())

    def kill_edges_signal(self) -> None:
        """SIGKILL every edge without waiting (the caller reaps with `reap_edges`)."""
        for edge in self.edges:
            if edge.running:
                signal_pid(edge.pid, signal.SIGKILL)

    def reap_edges(self) -> None:
        for edge in self.edges:
            if edge.proc is not None:
                edge.proc.wait()

    def fleet_lines(self) -> list[str]:
        """The agent's log lines about the fleet (from ExaBGP's stdout/stderr)."""
        return [line for line in self.log().splitlines() if "fleet" in line]


_NS_SUFFIX = {"upstream": "u", ETCD_NODE: "e"}


class FleetLab(TwoPopLab):
    """Namespaces `aa-<id>-u`, `-p1`.. `-pN`, `-e`; etcd is up and reachable from every PoP
    namespace when `build` returns (the PoPs are not started: `start_pops`)."""

    def __init__(
        self,
        *,
        exabgp_version: ExabgpVersion = "5.0",
        description: FleetDescription | None = None,
        timers: Timers = QUICK_TIMERS,
    ) -> None:
        self.fleet = description or build_fleet()
        super().__init__(exabgp_version=exabgp_version, description=self.fleet, timers=timers)
        self.fleet_pops: dict[str, FleetPop] = {}
        self._etcd: EtcdMember | None = None

    @property
    def etcd(self) -> EtcdMember:
        if self._etcd is None:
            raise RuntimeError("FleetLab not built")
        return self._etcd

    def _ns_suffix(self, node: str) -> str:
        return _NS_SUFFIX.get(node) or "p" + node.removeprefix("pop")

    def _build(self) -> None:
        desc = self.fleet
        self._build_network()
        self._etcd = EtcdMember(self.ns(ETCD_NODE), self.workdir, desc.etcd_address)
        self.etcd.start()
        for pop in desc.pops:
            self.etcd.wait_healthy(via=self.ns(pop.name))
            fleet_pop = FleetPop(self, pop.name, self.ns(pop.name))
            self.pops[pop.name] = fleet_pop
            self.fleet_pops[pop.name] = fleet_pop

    def start_pops(self) -> None:
        """Start every PoP with the two-PoP lab's quick ramp (25/50/100 %, and med_hold and
        min_update_interval scaled down with it): the agent ramps on its first start too."""
        for pop in self.fleet_pops.values():
            pop.start(ramp=True)

    def start_client(
        self, *, interval_s: float = 0.05, timeout_s: float = 0.3, max_s: float = 60.0
    ) -> Client:
        raise NotImplementedError("FleetLab has no client namespace (etcd stands there)")

    # -- observations ------------------------------------------------------------------------

    def view(self) -> View:
        """Every PoP's path for the VIP at the upstream, sorted by PoP."""
        return {
            pop: VipPath(r.med, r.as_path, GRACEFUL_SHUTDOWN in r.communities)
            for pop, r in sorted(self.vip_routes().items())
        }

    def normal_path(self, pop: str) -> VipPath:
        """Announced at the PoP's own MED, AS path of one, no GRACEFUL_SHUTDOWN."""
        return VipPath(self.fleet.pop(pop).med, (self.fleet.pop_as,), False)

    def depreferred_path(self) -> VipPath:
        """A drain's or a refused withdraw's path: max MED, GRACEFUL_SHUTDOWN, AS path x4."""
        return VipPath(DEPREFERRED_MED, (self.fleet.pop_as,) * DEPREFER_PREPENDS, True)

    def path_letter(self, pop: str, path: VipPath | None) -> str:
        """A for a normal path, D de-preferred, W none, Rn a staged re-announce (AS path xn);
        a trailing + when announced at another MED than the PoP's own (a capacity penalty)."""
        if path is None:
            return "W"
        if path == self.depreferred_path():
            return "D"
        prepends = len(path.as_path)
        letter = f"R{prepends}" if prepends > 1 else "A"
        return letter if path.med == self.fleet.pop(pop).med else letter + "+"

    def letters(self, v: View) -> dict[str, str]:
        return {p.name: self.path_letter(p.name, v.get(p.name)) for p in self.fleet.pops}

    def normal_pops(self, v: View) -> set[str]:
        return {pop for pop, path in v.items() if path == self.normal_path(pop)}

    def vip_routes(self) -> dict[str, BirdRoute]:
        """Every path the upstream holds for the VIP, by PoP."""
        return {
            pop: route
            for route in self.bird.route(VIP_PREFIX)
            if (pop := self.fleet.pop_by_address(route.neighbor)) is not None
        }

    def import_counters(self) -> dict[str, ImportCounters]:
        """The upstream's import counters per PoP session (reset if a session drops)."""
        return {pop.name: self.bird.import_counters(pop.session) for pop in self.fleet.pops}

    def session_states(self) -> dict[str, str]:
        return {pop.name: self.bird.protocol_state(pop.session) for pop in self.fleet.pops}

    def sessions(self) -> dict[str, tuple[str, ImportCounters]]:
        """Per PoP session at the upstream: its BGP state and import counters (one birdc call
        each)."""
        out = {}
        for pop in self.fleet.pops:
            status = self.bird.protocol(pop.session)
            out[pop.name] = (status.bgp_state or status.state, status.import_counters())
        return out

    def fleet_modes(self) -> dict[str, str | None]:
        return {name: pop.fleet_mode() for name, pop in self.fleet_pops.items()}

    def fleet_keys(self) -> dict[str, str]:
        """The fleet's keys in etcd (read from the etcd namespace)."""
        return self.etcd.range_prefix(FLEET_PREFIX, via=self.ns(ETCD_NODE))

    def ctl_put(self, key: str, value: dict[str, Any]) -> int:
        """Put `<prefix><key>` (e.g. `ctl/intent/region/eu`) as JSON; the write's revision."""
        return self.etcd.write("put", FLEET_PREFIX + key, json.dumps(value), via=self.ns(ETCD_NODE))

    def ctl_delete(self, key: str) -> int:
        """Delete `<prefix><key>`; the write's revision."""
        return self.etcd.write("delete", FLEET_PREFIX + key, via=self.ns(ETCD_NODE))

    def published(self, service: str | None = None) -> dict[str, str | None]:
        """What each PoP published for `service` (the lab's by default): A/D/W/S or None."""
        keys = self.fleet_keys()
        svc = service or self.fleet.service
        return {p.name: keys.get(f"{FLEET_PREFIX}svc/{svc}/pop/{p.name}") for p in self.fleet.pops}

    def acked_revisions(self) -> dict[str, int | None]:
        """Each PoP's `ctl_rev_applied` from its `pops/<pop>` key (None: no key or field)."""
        keys = self.fleet_keys()
        out: dict[str, int | None] = {}
        for pop in self.fleet.pops:
            raw = keys.get(f"{FLEET_PREFIX}pops/{pop.name}")
            try:
                rev = json.loads(raw)["ctl_rev_applied"] if raw else None
            except (ValueError, KeyError, TypeError):
                rev = None
            out[pop.name] = rev if isinstance(rev, int) else None
        return out

    def wait_acked(self, revision: int, timeout_s: float = 10.0) -> float:
        """Until every PoP acknowledged a `ctl/` revision ≥ `revision`; the seconds it took."""
        return wait_for(
            self.acked_revisions,
            lambda revs: all(r is not None and r >= revision for r in revs.values()),
            timeout_s=timeout_s,
            interval_s=0.1,
            what=f"every PoP's ctl_rev_applied >= {revision}",
        )

    def kill_all_edges(self) -> float:
        """SIGKILL every edge of every PoP at once; the monotonic time of the kill."""
        at = time.monotonic()
        for pop in self.fleet_pops.values():
            pop.kill_edges_signal()
        for pop in self.fleet_pops.values():
            pop.reap_edges()
        return at

    def report(self) -> str:
        """Fleet log lines and status of every agent, for failure messages."""
        parts = []
        for name, pop in self.fleet_pops.items():
            lines = pop.fleet_lines()[-15:]
            parts.append(f"--- {name} fleet log lines\n" + "\n".join(lines))
            try:
                status = pop.status()
                brief = {
                    "fleet_mode": fleet_mode_in_status(status),
                    "fleet": status.get("fleet"),
                    "services": [
                        {
                            k: s.get(k)
                            for k in ("name", "state", "announced", "published", "guard")
                            if k in s
                        }
                        for s in status.get("services", [])
                    ],
                }
                parts.append(f"--- {name} status: {json.dumps(brief, default=str)}")
            except Exception as exc:
                parts.append(f"--- {name} status unavailable: {exc!r}")
        if self._etcd is not None and self.etcd.running:
            try:
                parts.append(f"--- etcd keys: {self.fleet_keys()}")
            except Exception as exc:
                parts.append(f"--- etcd keys unavailable: {exc!r}")
        return "\n".join(parts)
