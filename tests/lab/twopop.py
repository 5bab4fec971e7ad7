"""`TwoPopLab`: the two-PoP topology of `topology_description` built as network namespaces.

upstream (BIRD with `protocol kernel`, forwarding on), pop1 and pop2 (ExaBGP running the real
agent, the VIP server answering with the PoP's name, two edge servers each), and a client that
reaches 192.0.2.10 through the upstream. `python -m tests.lab.twopop client ...` is the client's
bounded request loop, run inside the client namespace.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.lab.bird import Bird, BirdConfig
from tests.lab.edges import EdgeServer
from tests.lab.exabgp import Exabgp, ExabgpVersion
from tests.lab.harness import Lab
from tests.lab.netns import Netns, run_command, veth_pair
from tests.lab.processes import terminate
from tests.lab.topology_description import (
    QUICK_TIMERS,
    VIP_PREFIX,
    Timers,
    TwoPopDescription,
    build_two_pop,
    vip_control,
)
from tests.lab.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
# Keys the agent may not know yet (staged re-announcement, MED holds): left out if rejected.
OPTIONAL_KEYS = ("ramp", "med_hold", "min_update_interval")
_NS_SUFFIX = {"upstream": "u", "pop1": "p1", "pop2": "p2", "client": "c"}


class KernelBird(Bird):
    """BIRD with the description's full config text (sessions plus `protocol kernel`)."""

    def __init__(self, netns: Netns, workdir: Path, config: BirdConfig, text: str) -> None:
        super().__init__(netns, workdir, config)
        self.text = text

    def start(self, timeout_s: float = 5.0) -> float:
        self.config_path.write_text(self.text)
        run_command(["/usr/sbin/bird", "-p", "-c", str(self.config_path)])
        self.proc = self.netns.popen(
            ["/usr/sbin/bird", "-f", "-c", str(self.config_path), "-s", str(self.socket_path)],
            stdout_path=self.log_path,
            stderr_path=self.log_path,
        )
        return wait_for(
            lambda: self._alive_and(lambda: self.birdc("show", "status")),
            lambda out: "Daemon is up" in out,
            timeout_s=timeout_s,
            what=f"BIRD control socket {self.socket_path}",
        )


@dataclass(frozen=True)
class RouteState:
    """The upstream's view of the VIP: the best path's PoP, MED and AS path, and how many
    paths it holds."""

    pop: str | None
    med: int | None
    as_path: tuple[int, ...]
    paths: int

    def __str__(self) -> str:
        if self.pop is None:
            return "none"
        prepends = f" aspath x{len(self.as_path)}" if len(self.as_path) > 1 else ""
        others = f" (+{self.paths - 1} other)" if self.paths > 1 else ""
        return f"via {self.pop} med {self.med}{prepends}{others}"


@dataclass(frozen=True)
class Sample:
    """One client request: when it started (CLOCK_MONOTONIC, shared by all namespaces) and
    which PoP answered, or None with the error."""

    t: float
    answer: str | None
    error: str = ""


class PopNode:
    """One PoP namespace: the agent's config, ExaBGP running it, the VIP server, the edges."""

    def __init__(self, lab: TwoPopLab, name: str, netns: Netns) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.spec = lab.description.pop(name)
        self.edges: list[EdgeServer] = []
        self.vip_server: EdgeServer | None = None
        self.exabgp: Exabgp | None = None
        self.config_path = lab.workdir / f"{name}-agent.yaml"
        self.ramp = False

    def write_config(self, ramp: bool) -> None:
        data = self.lab.description.agent_config(
            self.name,
            timers=self.lab.timers,
            state_dir=str(self.lab.workdir / f"{self.name}-state"),
            ramp=ramp,
        )
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def config_valid(self) -> tuple[bool, str]:
        proc = _agent_cli("check-config", str(self.config_path))
        return proc.returncode == 0, proc.stderr.strip()

    def start(self, ramp: bool = True) -> None:
        """Start the VIP server, the edges, then ExaBGP with the agent. With `ramp`, the
        service ramps after recovery if this agent's config accepts `ramp` (else it is left
        out and `self.ramp` says so)."""
        self.write_config(ramp)
        ok, errors = self.config_valid()
        self.ramp = ramp
        if not ok and ramp and any(k in errors for k in OPTIONAL_KEYS):
            self.write_config(False)
            self.ramp = False
            ok, errors = self.config_valid()
        if not ok:
            raise RuntimeError(f"{self.name} agent config rejected: {errors}")
        workdir = self.lab.workdir
        vip = EdgeServer(
            self.netns, workdir, f"{self.name}-vip", self.lab.description.vip, 80, "http"
        )
        vip.control_path.write_text(vip_control(self.name))
        vip.start()
        self.vip_server = vip
        for i, address in enumerate(self.spec.edges):
            edge = EdgeServer(
                self.netns, workdir, f"{self.name}-edge{i + 1}", address, 8080, "http"
            )
            edge.start()
            self.edges.append(edge)
        conf = workdir / f"{self.name}-exabgp.conf"
        rendered = _agent_cli(
            "render",
            "exabgp",
            "--config",
            str(self.config_path),
            "--agent",
            f"{sys.executable} -m anycast_agent",
        )
        if rendered.returncode != 0:
            raise RuntimeError(f"render exabgp for {self.name}: {rendered.stderr.strip()}")
        conf.write_text(rendered.stdout)
        exa = Exabgp(
            self.netns,
            self.lab.exabgp_version,
            conf,
            workdir,
            name=f"{self.name}-exabgp",
            extra_env={"PYTHONPATH": str(REPO_ROOT)},
        )
        exa.start()
        self.exabgp = exa

    def fail_edges(self) -> None:
        for edge in self.edges:
            edge.kill()

    def restore_edges(self) -> None:
        for edge in self.edges:
            edge.start()

    def log(self) -> str:
        return "" if self.exabgp is None else self.exabgp.log_text()


def _agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anycast_agent", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=30,
    )


class TwoPopLab(Lab):
    """Builds every node of the description as a namespace (`aa-<id>-u`, `-p1`, `-p2`, `-c`);
    teardown ends every process by PID and deletes every namespace, also on errors."""

    def __init__(
        self,
        *,
        exabgp_version: ExabgpVersion = "5.0",
        description: TwoPopDescription | None = None,
        timers: Timers = QUICK_TIMERS,
    ) -> None:
        self.exabgp_version: ExabgpVersion = exabgp_version
        self.description = description or build_two_pop()
        self.timers = timers
        super().__init__()
        self.namespaces: dict[str, Netns] = {}  # by node name
        self.pops: dict[str, PopNode] = {}
        self._bird: KernelBird | None = None
        self.clients: list[Client] = []

    @property
    def bird(self) -> KernelBird:
        if self._bird is None:
            raise RuntimeError("TwoPopLab not built")
        return self._bird

    def ns(self, node: str) -> Netns:
        return self.namespaces[node]

    def _build(self) -> None:
        self._build_network()
        for pop in self.description.pops:
            self.pops[pop.name] = PopNode(self, pop.name, self.ns(pop.name))

    def _ns_suffix(self, node: str) -> str:
        return _NS_SUFFIX[node]

    def _build_network(self) -> None:
        """Every node's namespace, link, address and route, then the upstream's BIRD."""
        desc = self.description
        for node in desc.nodes:
            self.namespaces[node] = self._add_netns(f"{self.lab_id}-{self._ns_suffix(node)}")
        for link in desc.links:
            veth_pair(self.ns(link.a.node), link.a.ifname, self.ns(link.b.node), link.b.ifname)
        for node in desc.nodes:
            ns = self.ns(node)
            for endpoint in desc.endpoints(node):
                ns.add_address(endpoint.ifname, endpoint.address)
            for cidr in desc.loopback_addresses(node):
                ns.add_address("lo", cidr)
            if desc.forwarding(node):
                ns.sysctl("net.ipv4.ip_forward", "1")
        for route in desc.routes:
            self.ns(route.node).ip("route", "add", route.prefix, "via", route.via)
        self._bird = KernelBird(
            self.ns("upstream"), self.workdir, desc.bird_config(), desc.bird_conf()
        )
        self.bird.start()

    # -- observations ------------------------------------------------------------------------

    def route_state(self) -> RouteState:
        routes = self.bird.route(VIP_PREFIX)
        if not routes:
            return RouteState(None, None, (), 0)
        best = next((r for r in routes if r.primary), routes[0])
        return RouteState(
            pop=self.description.pop_by_address(best.neighbor),
            med=best.med,
            as_path=best.as_path,
            paths=len(routes),
        )

    def paths(self) -> dict[str, RouteState]:
        """Every path the upstream holds for the VIP, by PoP (best or not)."""
        return {
            pop: RouteState(pop, r.med, r.as_path, 1)
            for r in self.bird.route(VIP_PREFIX)
            if (pop := self.description.pop_by_address(r.neighbor)) is not None
        }

    def kernel_route(self) -> str:
        """The upstream's kernel route to the VIP (what forwarding actually uses)."""
        return self.ns("upstream").ip("route", "show", VIP_PREFIX).stdout.strip()

    def start_client(
        self, *, interval_s: float = 0.05, timeout_s: float = 0.3, max_s: float = 60.0
    ) -> Client:
        client = Client(self, len(self.clients), interval_s, timeout_s, max_s)
        client.start()
        self.clients.append(client)
        return client

    # -- teardown ----------------------------------------------------------------------------

    def _exabgps(self) -> Iterable[tuple[str, Exabgp]]:
        return (
            (f"ExaBGP of {pop.name}", pop.exabgp)
            for pop in self.pops.values()
            if pop.exabgp is not None
        )


class Client:
    """The client's request loop, run in the client namespace, bounded in count and time;
    its samples are read back from a JSON-lines file."""

    def __init__(
        self, lab: TwoPopLab, index: int, interval_s: float, timeout_s: float, max_s: float
    ) -> None:
        self.lab = lab
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_s = max_s
        self.max_requests = int(max_s / interval_s) + 1
        self.out_path = lab.workdir / f"client{index}.jsonl"
        self.log_path = lab.workdir / f"client{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._samples: list[Sample] = []

    def start(self) -> None:
        self.proc = self.lab.ns("client").popen(
            [
                sys.executable,
                "-m",
                "tests.lab.twopop",
                "client",
                "--url",
                f"http://{self.lab.description.vip}:{self.lab.description.vip_port}/",
                "--interval",
                str(self.interval_s),
                "--timeout",
                str(self.timeout_s),
                "--max-requests",
                str(self.max_requests),
                "--max-seconds",
                str(self.max_s),
                "--out",
                str(self.out_path),
            ],
            stdout_path=self.log_path,
            stderr_path=self.log_path,
            cwd=REPO_ROOT,
        )

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def samples(self) -> list[Sample]:
        """Every sample so far (reads only what the client appended since the last call)."""
        if self.out_path.exists():
            with self.out_path.open() as f:
                f.seek(self._offset)
                chunk = f.read()
            complete, _, _ = chunk.rpartition("\n")
            if complete:
                self._offset += len(complete) + 1
                for line in complete.splitlines():
                    raw = json.loads(line)
                    self._samples.append(Sample(raw["t"], raw["answer"], raw.get("error", "")))
        return list(self._samples)

    def last_answer(self) -> str | None:
        samples = self.samples()
        return samples[-1].answer if samples else None

    def wait_answer(self, pop: str, timeout_s: float, since: float = 0.0) -> Sample:
        """The first sample at or after `since` answered by `pop`."""
        found: list[Sample] = []

        def observe() -> list[Sample]:
            found[:] = [s for s in self.samples() if s.t >= since and s.answer == pop]
            return found

        wait_for(observe, timeout_s=timeout_s, what=f"client answered by {pop}")
        return found[0]


@dataclass(frozen=True)
class Gap:
    """What the client saw across a switch from one PoP to another."""

    last_old: float | None
    first_new: float
    failed: int

    @property
    def gap_s(self) -> float:
        return 0.0 if self.last_old is None else self.first_new - self.last_old


def measure_gap(samples: list[Sample], old: str, new: str, since: float) -> Gap:
    """From the last `old` answer before the first `new` answer after `since`, to that first
    `new` answer, with the failed requests in between."""
    first_new = next(s for s in samples if s.t >= since and s.answer == new)
    before = [s for s in samples if s.t < first_new.t]
    last_old = next((s for s in reversed(before) if s.answer == old), None)
    start = last_old.t if last_old is not None else since
    failed = sum(1 for s in before if s.t > start and s.answer is None)
    return Gap(last_old.t if last_old else None, first_new.t, failed)


# -- the client loop (runs inside the client namespace) ---------------------------------------


def _request(host: str, port: int, path: str, timeout_s: float) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return body
    finally:
        conn.close()


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.twopop client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=0.3)
    parser.add_argument("--max-requests", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    host, port, path = url.hostname or "", url.port or 80, url.path or "/"
    start = time.monotonic()
    deadline = start + args.max_seconds
    with args.out.open("a") as out:
        for n in range(args.max_requests):
            due = start + n * args.interval
            now = time.monotonic()
            if due >= deadline or now >= deadline:
                break
            if due > now:
                time.sleep(due - now)
            t = time.monotonic()
            record: dict[str, object] = {"t": t, "answer": None}
            try:
                record["answer"] = _request(host, port, path, args.timeout)
            except (OSError, RuntimeError, http.client.HTTPException) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            out.write(json.dumps(record) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["client"]:
        sys.exit("usage: python -m tests.lab.twopop client --url URL ...")
    sys.exit(client_main(sys.argv[2:]))
