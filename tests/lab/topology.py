"""`PopLab`: builds the PoP and upstream namespaces from a `LabDescription`, and tears down."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tests.lab.bird import Bird, BirdConfig, BirdSession
from tests.lab.description import LabDescription
from tests.lab.edges import EdgeMode, EdgeServer
from tests.lab.exabgp import (
    Exabgp,
    ExabgpNeighbor,
    ExabgpProcess,
    ExabgpVersion,
    render_exabgp_conf,
)
from tests.lab.harness import Lab
from tests.lab.netns import Netns, veth_pair

PopLabFactory = Callable[..., "PopLab"]
STUB_API = Path(__file__).with_name("stub_api.py")
# The kernel here has no dummy module, so edge addresses live on lo as /32s.
EDGE_IFNAME = "lo"


class PopLab(Lab):
    """Upstream ns (BIRD, AS 65000) ↔ veth(s) ↔ PoP ns (ExaBGP AS 65001, edge servers).

    `with PopLab(...) as lab:` builds the namespaces and starts BIRD; ExaBGP and edges start
    on request because each test picks its API process. Teardown ends every process and
    deletes every namespace, also when the build or the test raised.
    """

    def __init__(
        self,
        *,
        exabgp_version: ExabgpVersion = "5.0",
        description: LabDescription | None = None,
        links: int = 1,
        ipv6_sessions: bool = False,
        edges: int = 3,
    ) -> None:
        self.exabgp_version: ExabgpVersion = exabgp_version
        self.description = description or LabDescription.build(
            links=links, ipv6_sessions=ipv6_sessions, edges=edges
        )
        super().__init__()
        self.edges: dict[str, EdgeServer] = {}
        self.exabgps: list[Exabgp] = []
        self._bird: Bird | None = None
        self._upstream: Netns | None = None
        self._pop: Netns | None = None

    # -- accessors that fail loudly before build() ---------------------------------------------

    @property
    def bird(self) -> Bird:
        if self._bird is None:
            raise RuntimeError("PopLab not built")
        return self._bird

    @property
    def upstream(self) -> Netns:
        if self._upstream is None:
            raise RuntimeError("PopLab not built")
        return self._upstream

    @property
    def pop(self) -> Netns:
        if self._pop is None:
            raise RuntimeError("PopLab not built")
        return self._pop

    @property
    def exabgp(self) -> Exabgp:
        """The most recently started ExaBGP."""
        if not self.exabgps:
            raise RuntimeError("no ExaBGP started in this lab")
        return self.exabgps[-1]

    # -- build ---------------------------------------------------------------------------------

    def _build(self) -> None:
        desc = self.description
        self._upstream = self._add_netns(f"{self.lab_id}-u")
        self._pop = self._add_netns(f"{self.lab_id}-p")
        for link in desc.links:
            veth_pair(self.upstream, link.upstream_ifname, self.pop, link.pop_ifname)
            self.upstream.add_address(link.upstream_ifname, link.upstream_v4)
            self.upstream.add_address(link.upstream_ifname, link.upstream_v6)
            self.pop.add_address(link.pop_ifname, link.pop_v4)
            self.pop.add_address(link.pop_ifname, link.pop_v6)
        for address in desc.edge_addresses:
            self.pop.add_address(EDGE_IFNAME, f"{address}/32")
        self._bird = Bird(
            self.upstream,
            self.workdir,
            BirdConfig(
                router_id=desc.upstream_router_id,
                sessions=tuple(
                    BirdSession(
                        name=s.name,
                        local_address=s.upstream_address,
                        local_as=s.upstream_as,
                        neighbor_address=s.pop_address,
                        peer_as=s.pop_as,
                        families=s.families,
                    )
                    for s in desc.sessions
                ),
            ),
        )
        self.bird.start()

    def add_netns(self, role: str) -> Netns:
        """An extra namespace of this lab (e.g. one per edge); `role` is a short suffix."""
        return self._add_netns(f"{self.lab_id}-{role}")

    # -- ExaBGP --------------------------------------------------------------------------------

    def exabgp_neighbors(
        self, processes: Sequence[str] = (), hold_time_s: int = 3
    ) -> list[ExabgpNeighbor]:
        desc = self.description
        return [
            ExabgpNeighbor(
                peer_address=s.upstream_address,
                local_address=s.pop_address,
                router_id=desc.pop_router_id,
                local_as=s.pop_as,
                peer_as=s.upstream_as,
                families=s.families,
                hold_time_s=hold_time_s,
                processes=tuple(processes),
            )
            for s in desc.sessions
        ]

    def stub_process(self, commands: Sequence[str] = (), name: str = "stub") -> ExabgpProcess:
        """The stub API process: sends `commands` (default: announce 192.0.2.10/32 med 100),
        then logs everything ExaBGP says to `<workdir>/<name>.api-in` until stdin EOF."""
        argv = [sys.executable, str(STUB_API), "--log", str(self.workdir / f"{name}.api-in")]
        if commands:
            commands_path = self.workdir / f"{name}.commands"
            commands_path.write_text("".join(f"{c}\n" for c in commands))
            argv += ["--commands", str(commands_path)]
        return ExabgpProcess(name=name, argv=tuple(argv))

    def write_exabgp_conf(
        self,
        processes: Sequence[ExabgpProcess],
        neighbors: Sequence[ExabgpNeighbor] | None = None,
        name: str = "exabgp",
    ) -> Path:
        if neighbors is None:
            neighbors = self.exabgp_neighbors([p.name for p in processes])
        path = self.workdir / f"{name}.conf"
        path.write_text(render_exabgp_conf(neighbors, processes))
        return path

    def start_exabgp(
        self,
        processes: Sequence[ExabgpProcess] | None = None,
        *,
        config_path: Path | None = None,
        version: ExabgpVersion | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "exabgp",
    ) -> Exabgp:
        """Start ExaBGP in the PoP ns with `config_path`, or a config made for `processes`
        (the stub API process when neither is given)."""
        if config_path is None:
            procs = list(processes) if processes is not None else [self.stub_process()]
            config_path = self.write_exabgp_conf(procs, name=name)
        exa = Exabgp(
            self.pop,
            version or self.exabgp_version,
            config_path,
            self.workdir,
            name=name,
            extra_env=extra_env,
        )
        exa.start()
        self.exabgps.append(exa)
        return exa

    # -- edges ---------------------------------------------------------------------------------

    def start_edge(
        self, index: int, *, port: int = 8080, mode: EdgeMode = "http", status: int = 200
    ) -> EdgeServer:
        """Start a server on the index-th edge address (203.0.113.11 + index)."""
        address = self.description.edge_addresses[index]
        name = f"edge{index + 1}" if mode == "http" else f"edge{index + 1}-{mode}{port}"
        edge = EdgeServer(self.pop, self.workdir, name, address, port, mode, status)
        edge.start()
        self.edges[name] = edge
        return edge

    # -- teardown ------------------------------------------------------------------------------

    def _exabgps(self) -> Iterable[tuple[str, Exabgp]]:
        return ((f"ExaBGP {exa.pid}", exa) for exa in reversed(self.exabgps))
